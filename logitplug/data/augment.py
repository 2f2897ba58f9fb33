"""Training-data augmentation that teaches a plugin to leave copying to the black box.

A plugin trained on a few hundred rows sees the same few dozen names over and over and learns them
as vocabulary: at test time it pushes "Alimentum" where the input says "Blue Spice" (half of the
E2E test split's venue names never occur in its training part). The black box, prompted with the
input, copies names well. Replacing the names a target copies from its input by random
pseudo-names, consistently in input and target, removes any prior the plugin could learn for them;
the only way to predict those positions is to defer to the black box, which is what we want at
test time, when names are new.

Task-agnostic by construction: a "name" is a run of capitalized words that appears verbatim in the
input and in the target. Lower-case content (CommonGen's concepts) is left alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Sequence

from .core import Example

# a run of capitalized words (letters, digits and a few joiners inside a word): "Blue Spice", "Aarhus Airport"
_CAPITALIZED_RUN = re.compile(r"\b[A-Z][\w'&.-]*(?:[ ][A-Z][\w'&.-]*)*")
# the syllables training's pseudo-names are made of (augment_copied_names)
TRAINING_SYLLABLES = ("ka", "lo", "mi", "ven", "dar", "tho", "rel", "zu", "pan", "mor", "sil", "bri", "quen", "tas", "ol",
                      "ber", "nak", "fi", "gos", "ra", "tel", "um", "vo", "dri", "hal", "sen", "cor", "ib", "wen", "ly")
# held-out renaming's (rename_held_out), none of them in TRAINING_SYLLABLES: a plugin that learned
# training's pseudo-names as vocabulary would look better on names made of the same pieces than on a
# test split's new names (session 21: a renamed-held-out choice that saw a tie lost 11 BLEU on test)
HELD_OUT_SYLLABLES = ("be", "gu", "shen", "pek", "yar", "dox", "nim", "fey", "jub", "wox", "ep", "kru", "zim", "hog",
                      "tav", "ux", "plen", "sny", "ex", "gar")
SYLLABLES = {"training": TRAINING_SYLLABLES, "held-out": HELD_OUT_SYLLABLES}
# bumped when the same settings rename held-out rows differently (2: names in a fixed order, session 22)
RENAMING_VERSION = 2


def _names_repeated(source: str, texts: Sequence[str]) -> list[str]:
    """Capitalized runs of ``source`` that one of ``texts`` repeats verbatim, longest first (ties in
    alphabetical order: a set's order changes with each process's string hashing, and with it which
    pseudo-name each name gets, so two processes renamed the same held-out rows differently)."""
    found = {m.group(0).rstrip(".'-") for m in _CAPITALIZED_RUN.finditer(source)}
    shared = [n for n in found if n and any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", t) for t in texts)]
    return sorted(shared, key=lambda n: (-len(n), n))


def copied_names(example: Example) -> list[str]:
    """Capitalized runs of the input that the target repeats verbatim, longest first."""
    return _names_repeated(example.input, [example.target]) if example.target else []


def pseudo_name(words: int, rng: random.Random, syllables: Sequence[str] = TRAINING_SYLLABLES) -> str:
    """Capitalized nonsense words, 2-3 of ``syllables`` each: unlike any name in the training data."""
    return " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(words))


def _rename(example: Example, names: Sequence[str], rng: random.Random,
            syllables: Sequence[str] = TRAINING_SYLLABLES) -> Example:
    """``example`` with each of ``names`` replaced by one pseudo-name in its input, target and references."""
    inp, target, refs = example.input, example.target, list(example.references)
    for name in names:
        new = pseudo_name(len(name.split(" ")), rng, syllables)
        pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        inp = pattern.sub(new, inp)
        target = pattern.sub(new, target) if target else target
        refs = [pattern.sub(new, r) for r in refs]
    return replace(example, input=inp, target=target, references=tuple(refs))


def substitute_names(example: Example, rng: random.Random) -> Example:
    """``example`` with every copied name replaced by one pseudo-name, the same in input and target."""
    names = copied_names(example)
    return _rename(example, names, rng) if names else example


def rename_held_out(examples: Sequence[Example], fraction: float, seed: int,
                    syllables: Sequence[str] = HELD_OUT_SYLLABLES) -> list[Example]:
    """Held-out inputs for choosing by greedy text, a seeded ``fraction`` of them with their copied
    names (those any reference repeats) replaced by pseudo-names in the input and every reference.

    Held-out rows usually name the same entities as the training rows (E2E's validation split has
    the training part's venues), while test inputs often name new ones. A strength that pushes the
    plugin's learned names looks best on the former and costs on the latter; renamed inputs let a
    choice made on held-out data see that cost. The pseudo-names are made of ``syllables``, by
    default none that training's augmentation uses, as a test split's new names are."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"renamed held-out fraction must be in [0, 1], got {fraction}")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        texts = ex.references or ((ex.target,) if ex.target else ())
        renamed = texts and rng.random() < fraction
        out.append(_rename(ex, _names_repeated(ex.input, texts), rng, syllables) if renamed else ex)
    return out


def augment_copied_names(examples: Sequence[Example], fraction: float, seed: int) -> list[Example]:
    """A seeded ``fraction`` of the rows that copy a name get their names replaced (see module doc);
    the rest stay as they are, so the plugin still learns the task's phrasing around real names."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"copy-augmentation fraction must be in [0, 1], got {fraction}")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        out.append(substitute_names(ex, rng) if rng.random() < fraction else ex)
    return out

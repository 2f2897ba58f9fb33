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
_SYLLABLES = ("ka", "lo", "mi", "ven", "dar", "tho", "rel", "zu", "pan", "mor", "sil", "bri", "quen", "tas", "ol",
              "ber", "nak", "fi", "gos", "ra", "tel", "um", "vo", "dri", "hal", "sen", "cor", "ib", "wen", "ly")


def copied_names(example: Example) -> list[str]:
    """Capitalized runs of the input that the target repeats verbatim, longest first."""
    if not example.target:
        return []
    found = {m.group(0).rstrip(".'-") for m in _CAPITALIZED_RUN.finditer(example.input)}
    shared = [n for n in found if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", example.target)]
    return sorted(shared, key=len, reverse=True)


def pseudo_name(words: int, rng: random.Random) -> str:
    """Capitalized nonsense words, 2-3 syllables each: unlike any name in the training data."""
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize() for _ in range(words))


def substitute_names(example: Example, rng: random.Random) -> Example:
    """``example`` with every copied name replaced by one pseudo-name, the same in input and target."""
    names = copied_names(example)
    if not names:
        return example
    inp, tgt = example.input, example.target or ""
    for name in names:
        new = pseudo_name(len(name.split(" ")), rng)
        pattern = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
        inp, tgt = pattern.sub(new, inp), pattern.sub(new, tgt)
    return replace(example, input=inp, target=tgt)


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

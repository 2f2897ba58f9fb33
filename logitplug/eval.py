"""Text-quality metrics on lists of strings, multi-reference, each returned with its settings.

Conventions follow the E2E challenge's scoring script (e2e-metrics), so numbers are comparable
with published E2E and WebNLG results:

- BLEU: sacrebleu corpus BLEU, 13a tokenization, lowercased, no smoothing (as e2e-metrics'
  mteval-v13a-compatible BLEU), all references of an input.
- NIST: NLTK ``corpus_nist`` (n = 5) on lowercased 13a-tokenized text, all references.
- METEOR 1.5 and CIDEr (CIDEr-D as in pycocoevalcap): the COCO caption evaluation code, after
  its PTB tokenizer (lowercased, punctuation removed). Both need Java; a clear error says so.
- ROUGE-1/2/L: rouge-score F1 with stemming, best over the references, averaged over inputs.
- E2E slot error rate: see ``e2e_slot_errors``.

Scores are on a 0-100 scale except NIST, METEOR (0-1 in the literature, reported x100 here for
one table) and CIDEr (0-10), which keep their usual scales; every ``MetricScore`` says which.
"""

from __future__ import annotations

import atexit
import re
import shutil
from dataclasses import dataclass, field
from typing import Iterable, Sequence

References = Sequence[Sequence[str]]


@dataclass(frozen=True)
class MetricScore:
    """A number with the settings that produced it (compare only scores with equal signatures)."""

    name: str
    score: float
    signature: str
    per_item: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f} ({self.signature})"

    def to_dict(self) -> dict:
        return {"name": self.name, "score": self.score, "signature": self.signature}


def _check(hypotheses: Sequence[str], references: References) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(len(r) == 0 for r in references):
        raise ValueError("every hypothesis needs at least one reference")


def bleu(hypotheses: Sequence[str], references: References) -> MetricScore:
    """Corpus BLEU (sacrebleu, 13a tokenization, lowercased, unsmoothed), any number of references.

    Examples:
        >>> round(bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]).score, 1)
        100.0
    """
    import sacrebleu

    _check(hypotheses, references)
    width = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    # the E2E scoring script's BLEU is case-insensitive and unsmoothed (pymteval defaults)
    metric = sacrebleu.metrics.BLEU(lowercase=True, smooth_method="none")
    return MetricScore("BLEU", metric.corpus_score(list(hypotheses), streams).score, str(metric.get_signature()))


def _rouge(kind: str, label: str, hypotheses: Sequence[str], references: References) -> MetricScore:
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    best = [max(scorer.score(ref, hyp)[kind].fmeasure for ref in refs) for hyp, refs in zip(hypotheses, references)]
    return MetricScore(label, 100.0 * sum(best) / len(best), f"{kind}|f1|stem:yes|agg:mean-of-best-ref", tuple(best))


def rouge_l(hypotheses: Sequence[str], references: References) -> MetricScore:
    """Mean over hypotheses of the best ROUGE-L F1 against its references (rouge-score, stemming), x100.

    Examples:
        >>> rouge_l(["a b c"], [["x y", "a b c"]]).score
        100.0
    """
    return _rouge("rougeL", "ROUGE-L", hypotheses, references)


def rouge_1(hypotheses: Sequence[str], references: References) -> MetricScore:
    return _rouge("rouge1", "ROUGE-1", hypotheses, references)


def rouge_2(hypotheses: Sequence[str], references: References) -> MetricScore:
    return _rouge("rouge2", "ROUGE-2", hypotheses, references)


def nist(hypotheses: Sequence[str], references: References, n: int = 5) -> MetricScore:
    """Corpus NIST (NLTK) on sacrebleu's 13a tokens; 0 for an empty corpus of tokens.

    Examples:
        >>> nist(["the cat sat on the mat"], [["the cat sat on the mat"]]).score > 0
        True
    """
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    _check(hypotheses, references)
    tok = Tokenizer13a()
    hyps = [tok(h.lower()).split() for h in hypotheses]
    refs = [[tok(r.lower()).split() for r in rs] for rs in references]
    try:
        value = float(corpus_nist(refs, hyps, n=n))
    except ZeroDivisionError:  # every hypothesis empty
        value = 0.0
    return MetricScore("NIST", value, f"nist|n:{n}|tok:13a|lc|nltk")


def require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(
            "METEOR and CIDEr need Java (pycocoevalcap runs METEOR 1.5 and the PTB tokenizer as jars). "
            "Install a JRE, e.g. `apt-get install -y default-jre-headless`, then retry."
        )


def _coco_inputs(hypotheses: Sequence[str], references: References):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _check(hypotheses, references)
    require_java()
    clean = lambda s: " ".join(s.replace("|||", " ").split()) or "."  # noqa: E731 -- METEOR cannot take an empty line
    gts = {i: [{"caption": clean(r)} for r in refs] for i, refs in enumerate(references)}
    res = {i: [{"caption": clean(h)}] for i, h in enumerate(hypotheses)}
    tokenizer = PTBTokenizer()
    return tokenizer.tokenize(gts), tokenizer.tokenize(res)


def meteor(hypotheses: Sequence[str], references: References) -> MetricScore:
    """METEOR 1.5 (pycocoevalcap, English, normalized), x100. Needs Java."""
    gts, res = _coco_inputs(hypotheses, references)
    try:
        score, per_item = _meteor_scorer().compute_score(gts, res)
    except (BrokenPipeError, OSError, ValueError):  # the jar died since the last call: start a fresh one
        _stop_meteor()
        score, per_item = _meteor_scorer().compute_score(gts, res)
    return MetricScore("METEOR", 100.0 * float(score), "meteor-1.5|lang:en|norm|tok:ptb-lower", tuple(map(float, per_item)))


_METEOR: list = []  # one running METEOR jar per process: starting one (paraphrase tables) takes ~6 s


def _meteor_scorer():
    if _METEOR and _METEOR[0].meteor_p.poll() is not None:  # the jar has exited
        _stop_meteor()
    if not _METEOR:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR.append(Meteor())
    return _METEOR[0]


def _stop_meteor() -> None:
    """Stop the METEOR jar now rather than at garbage collection (its __del__ then finds it stopped)."""
    import threading

    while _METEOR:
        scorer = _METEOR.pop()
        scorer.lock = threading.Lock()  # a failed call leaves pycocoevalcap's lock held, and __del__ takes it
        proc = scorer.meteor_p
        if proc.poll() is None:
            proc.stdin.close()
            proc.kill()
            proc.wait()


atexit.register(_stop_meteor)


def cider(hypotheses: Sequence[str], references: References) -> MetricScore:
    """CIDEr (pycocoevalcap's CIDEr-D implementation, document frequencies from these references). Needs Java."""
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(hypotheses, references)
    score, per_item = Cider().compute_score(gts, res)
    return MetricScore("CIDEr", float(score), "cider|n:4|sigma:6|idf:corpus|tok:ptb-lower", tuple(map(float, per_item)))


METRICS = {"BLEU": bleu, "NIST": nist, "METEOR": meteor, "ROUGE-1": rouge_1, "ROUGE-2": rouge_2,
           "ROUGE-L": rouge_l, "CIDEr": cider}


def metric_names(spec: str) -> tuple[str, ...]:
    """The metrics of a spec such as ``"BLEU"`` or ``"BLEU+METEOR+ROUGE-L+CIDEr"`` (a mix, for
    choices that should not trade one metric away for another); a ValueError names what is unknown."""
    names = tuple(m.strip() for m in str(spec).split("+"))
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in {spec!r}; choose from {list(METRICS)}, joined by '+' for a mix")
    return names


def evaluate(hypotheses: Sequence[str], references: References, metrics: Iterable[str] = tuple(METRICS)) -> dict[str, MetricScore]:
    """Several metrics at once, by name (see ``METRICS``)."""
    names = list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    return {m: METRICS[m](hypotheses, references) for m in names}


# ---- E2E slot error rate -------------------------------------------------------------------

_MR_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]")

# How each value of the closed-vocabulary slots shows up in text (a simplified form of the patterns
# in Dušek et al. 2019's slot_error.py). Matching is case-insensitive on word boundaries.
_VALUE_PATTERNS: dict[str, dict[str, str]] = {
    "eatType": {"coffee shop": r"coffee[- ]?shops?|caf[eé]s?", "pub": r"pubs?", "restaurant": r"restaurants?"},
    "food": {"Chinese": r"chinese", "English": r"english|british", "French": r"french", "Fast food": r"fast[- ]food",
             "Indian": r"indian", "Italian": r"italian", "Japanese": r"japanese|sushi"},
    "priceRange": {
        "cheap": r"cheap|inexpensive|low[- ]cost|low(?:er)?[- ]price[ds]?|affordable|budget",
        "less than £20": r"less than (?:£ ?)?20|under (?:£ ?)?20|below (?:£ ?)?20|cheap|inexpensive|low[- ]price[ds]?",
        "moderate": r"moderate(?:ly)?(?:[- ]priced?)?|mid(?:dle)?[- ]range|average[- ]price[ds]?|reasonabl[ey]",
        "£20-25": r"(?:£ ?)?20 ?(?:-|to) ?(?:£ ?)?25|moderate(?:ly)?|average[- ]price[ds]?",
        "high": r"expensive|high(?:er)?[- ]price[ds]?|high[- ]end|pricey|costly|more than (?:£ ?)?30",
        "more than £30": r"more than (?:£ ?)?30|over (?:£ ?)?30|above (?:£ ?)?30|expensive|high[- ]price[ds]?",
    },
    "customer rating": {
        "low": r"low\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\blow|poor(?:ly)?|1 out of 5|one star|1[- ]star",
        "1 out of 5": r"1 out of 5|one out of five|one[- ]star|1[- ]star|low\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\blow|poor(?:ly)?",
        "average": r"average\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\baverage|3 out of 5|three[- ]star|3[- ]star|mediocre",
        "3 out of 5": r"3 out of 5|three out of five|three[- ]star|3[- ]star|average\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\baverage",
        "high": r"high(?:ly)?\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\bhigh(?:ly)?|excellent|5 out of 5|five[- ]star|5[- ]star",
        "5 out of 5": r"5 out of 5|five out of five|five[- ]star|5[- ]star|high(?:ly)?\b[^.,]{0,20}\brat(?:ed|ing)s?|rat(?:ed|ing)s?\b[^.,]{0,15}\bhigh(?:ly)?|excellent",
    },
    "area": {"riverside": r"river(?:side)?", "city centre": r"city cent(?:re|er)|centre of the city|downtown|centre|center"},
    "familyFriendly": {
        "yes": r"(?:family|kids?|child|children)[- ]friendly|family[- ]oriented|(?:children|kids|families) (?:are )?welcome|"
               r"welcomes? (?:children|kids|families)|(?:good|great|suitable|ideal|perfect) for (?:the )?(?:whole )?(?:kids|children|famil(?:y|ies))",
        "no": r"(?:not|n't|non|no)\b[^.,]{0,25}\b(?:family|kids?|child|children|famil(?:y|ies))|adults?[- ]only|no (?:kids|children)",
    },
}
# Words that are generic and never count as an invented value when their slot is absent.
_NOT_HALLUCINATION = {("eatType", "restaurant")}
# Slots where mentioning a second value is itself an error even when the MR holds the slot.
_EXCLUSIVE_SLOTS = {"eatType", "food", "area"}


def parse_mr(mr: str) -> dict[str, str]:
    """``"name[Aromi], food[English]"`` -> ``{"name": "Aromi", "food": "English"}``.

    Examples:
        >>> parse_mr("name[The Eagle], customer rating[5 out of 5]")
        {'name': 'The Eagle', 'customer rating': '5 out of 5'}
    """
    return {m.group(1).strip(): m.group(2).strip() for m in _MR_SLOT.finditer(mr)}


def _pattern_of(patterns: dict[str, str], value: str) -> str | None:
    return next((p for v, p in patterns.items() if v.lower() == value.lower()), None)


def _found(pattern: str, text: str) -> bool:
    return re.search(rf"(?<![\w-])(?:{pattern})(?![\w])", text, flags=re.IGNORECASE) is not None


@dataclass(frozen=True)
class SlotErrors:
    missing: tuple[str, ...]  # "slot=value" of the MR not realized in the text
    hallucinated: tuple[str, ...]  # "slot=value" realized in the text but not in the MR
    total_slots: int


def e2e_slot_errors(mr: str, text: str, known_names: Iterable[str] = ()) -> SlotErrors:
    """Which MR values an output leaves out, and which restaurant attributes it adds.

    ``name``/``near`` must appear verbatim (case-insensitive). Closed-vocabulary slots (eatType,
    food, priceRange, customer rating, area, familyFriendly) match the patterns above; a value of
    such a slot that the MR does not hold counts as hallucinated, and so does any of
    ``known_names`` (e.g. all venue names of the dataset) that is neither the MR's name nor near.

    Examples:
        >>> e2e_slot_errors("name[Aromi], food[Chinese], area[riverside]", "Aromi serves Italian food by the river.")
        SlotErrors(missing=('food=Chinese',), hallucinated=('food=Italian',), total_slots=3)
    """
    slots = parse_mr(mr)
    original = text
    missing, hallucinated = [], []
    for slot in ("name", "near"):  # venue names may contain attribute words ("Raja Indian Cuisine", "Café Rouge")
        if slots.get(slot) and slots[slot].lower() in text.lower():
            text = re.sub(re.escape(slots[slot]), " ", text, flags=re.IGNORECASE)
    if slots.get("familyFriendly", "").lower() == "yes":
        # "not family friendly" must not count as the yes value
        text_for_yes = re.sub(_VALUE_PATTERNS["familyFriendly"]["no"], " ", text, flags=re.IGNORECASE)
    else:
        text_for_yes = text
    for slot, value in slots.items():
        patterns = _VALUE_PATTERNS.get(slot)
        if slot in ("name", "near"):
            ok = value.lower() in original.lower()
        elif patterns is None:
            ok = value.lower() in text.lower()
        else:
            ok = _found(_pattern_of(patterns, value) or re.escape(value), text_for_yes if slot == "familyFriendly" else text)
        if not ok:
            missing.append(f"{slot}={value}")
    for slot, patterns in _VALUE_PATTERNS.items():
        if slot in slots and slot not in _EXCLUSIVE_SLOTS:
            continue  # graded/polar slots the MR holds: a wrong value already shows up as missing
        own = slots.get(slot, "").lower()
        own_pattern = _pattern_of(patterns, own) if own else None
        for value, pattern in patterns.items():
            if value.lower() == own or (slot, value) in _NOT_HALLUCINATION:
                continue
            # a synonym of the MR's own value (e.g. "cheap" for "less than £20") is not an invention
            if own_pattern and any(_found(own_pattern, m.group(0)) for m in
                                   re.finditer(rf"(?<![\w-])(?:{pattern})(?![\w])", text, flags=re.IGNORECASE)):
                continue
            if _found(pattern, text):
                hallucinated.append(f"{slot}={value}")
                break  # one invented value per slot is enough to count it
    mentioned = {slots.get("name", "").lower(), slots.get("near", "").lower()}
    for name in known_names:
        if name and name.lower() not in mentioned and _found(re.escape(name), original):
            hallucinated.append(f"name={name}")
    return SlotErrors(tuple(missing), tuple(hallucinated), len(slots))


def slot_error_rate(hypotheses: Sequence[str], mrs: Sequence[str], known_names: Iterable[str] = ()) -> MetricScore:
    """E2E slot error rate x100: (missing + hallucinated slot values) / slots in the MRs.

    Examples:
        >>> slot_error_rate(["Aromi is a pub."], ["name[Aromi], eatType[pub]"]).score
        0.0
    """
    if len(hypotheses) != len(mrs):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(mrs)} meaning representations")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    names = list(known_names)
    errors = [e2e_slot_errors(mr, hyp, names) for hyp, mr in zip(hypotheses, mrs)]
    total = sum(e.total_slots for e in errors)
    wrong = sum(len(e.missing) + len(e.hallucinated) for e in errors)
    per_item = tuple((len(e.missing) + len(e.hallucinated)) / max(e.total_slots, 1) for e in errors)
    return MetricScore("SER", 100.0 * wrong / max(total, 1), f"e2e-ser|names:{len(names)}|logitplug-patterns-v1", per_item)

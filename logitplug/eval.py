"""Text-quality metrics on lists of strings, multi-reference, each returning a signed score.

Only BLEU and ROUGE-L for now (the core's main job needs them); the full suite (METEOR, CIDEr,
NIST, ROUGE-1/2, slot error rate) extends this module with the same ``MetricScore`` results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class MetricScore:
    """A number with the settings that produced it (compare only scores with equal signatures)."""

    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f} ({self.signature})"


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    if any(len(r) == 0 for r in references):
        raise ValueError("every hypothesis needs at least one reference")


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> MetricScore:
    """Corpus BLEU (sacrebleu, 13a tokenization), any number of references per hypothesis.

    Examples:
        >>> round(bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]).score, 1)
        100.0
    """
    import sacrebleu

    _check(hypotheses, references)
    width = max(len(r) for r in references)
    streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
    metric = sacrebleu.metrics.BLEU()
    return MetricScore("BLEU", metric.corpus_score(list(hypotheses), streams).score, str(metric.get_signature()))


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> MetricScore:
    """Mean over hypotheses of the best ROUGE-L F1 against its references (rouge-score, stemming), x100.

    Examples:
        >>> rouge_l(["a b c"], [["x y", "a b c"]]).score
        100.0
    """
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    best = [max(scorer.score(ref, hyp)["rougeL"].fmeasure for ref in refs) for hyp, refs in zip(hypotheses, references)]
    return MetricScore("ROUGE-L", 100.0 * sum(best) / len(best), "rougeL|stem:yes|agg:mean-of-best-ref")

"""Model selection by what users see: a text metric of greedy outputs on held-out inputs.

The paper picks the epoch (and hyperparameters) with the lowest held-out loss. Loss rewards
hedging over the whole vocabulary, while users read argmax text; a plugin with the best loss can
write worse sentences (DESIGN.md). ``text_metric_selector`` gives ``train`` a scorer that decodes
a fixed set of held-out inputs and scores them against all their references.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from .blackbox import BlackBox
from .combine import CombinationRule
from .data import Example, PromptTemplate, encode_prompt, group_by_input
from .decode import Decoder, GenerationConfig
from .eval import evaluate
from .reweighter import Reweighter


def text_metric_selector(
    blackbox: BlackBox,
    template: PromptTemplate,
    held_out: Sequence[Example],
    metric: str,
    rule: CombinationRule,
    generation: GenerationConfig | None = None,
    max_inputs: int = 100,
) -> Callable[[Reweighter], float]:
    """A scorer (higher is better) of a reweighter: ``metric`` of its greedy outputs on the first
    ``max_inputs`` distinct held-out inputs, against all their references."""
    inputs = [ex for ex in group_by_input(held_out) if ex.references][:max_inputs]
    if not inputs:
        raise ValueError("selection by a text metric needs held-out examples with targets")
    gen = replace(generation or GenerationConfig(repetition_penalty=1.1), strategy="greedy")
    room = blackbox.max_context - gen.max_new_tokens
    prompts = [encode_prompt(blackbox.tokenizer, template, ex.input, room) for ex in inputs]
    refs = [list(ex.references) for ex in inputs]

    def score(reweighter: Reweighter) -> float:
        outputs = [g.text for g in Decoder(blackbox, reweighter, rule, gen).generate_ids(prompts)]
        return evaluate(outputs, refs, [metric])[metric].score

    return score

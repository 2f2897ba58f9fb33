"""Model selection by what users see: a text metric of greedy outputs on held-out inputs.

The paper picks the epoch (and hyperparameters) with the lowest held-out loss. Loss rewards
hedging over the whole vocabulary, while users read argmax text; a plugin with the best loss can
write worse sentences (DESIGN.md). ``text_metric_selector`` gives ``train`` a scorer that decodes
a fixed set of held-out inputs and scores them against all their references.
``fix_demonstrations`` uses the same scoring to choose how many demonstrations a prompt holds,
and ``train`` (``strength_by``, with ``text_metrics_scorer``) to choose the reweighting strength
of the kept plugin, by one metric or a mix.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .blackbox import BlackBox
from .combine import BlackBoxOnly, CombinationRule
from .data import Example, PromptTemplate, draw_demonstrations, encode_prompt, group_by_input
from .data.augment import SYLLABLES, rename_held_out
from .decode import Decoder, GenerationConfig
from .eval import evaluate, metric_names
from .reweighter import Reweighter, read_sidecar


def text_metrics_scorer(
    blackbox: BlackBox,
    template: PromptTemplate,
    held_out: Sequence[Example],
    metrics: Sequence[str],
    rule: CombinationRule,
    generation: GenerationConfig | None = None,
    max_inputs: int = 100,
    renamed: float = 0.0,
    seed: int = 0,
    renamed_syllables: str = "held-out",
) -> TextMetricsScorer:
    """A scorer of a reweighter: each of ``metrics`` of its greedy outputs (through ``rule``, or
    the rule given with the call) on the first ``max_inputs`` distinct held-out inputs, against
    all their references. One decode serves every metric. A seeded ``renamed`` fraction of the
    inputs get pseudo-names for their copied names (``rename_held_out``), made of the
    ``renamed_syllables`` inventory (``logitplug.data.augment.SYLLABLES``)."""
    inputs = [ex for ex in group_by_input(held_out) if ex.references][:max_inputs]
    if not inputs:
        raise ValueError("selection by a text metric needs held-out examples with targets")
    if renamed:
        inputs = rename_held_out(inputs, renamed, seed, SYLLABLES[renamed_syllables])
    gen = replace(generation or GenerationConfig(repetition_penalty=1.1), strategy="greedy")
    room = blackbox.max_context - gen.max_new_tokens
    prompts = [encode_prompt(blackbox.tokenizer, template, ex.input, room) for ex in inputs]
    return TextMetricsScorer(blackbox, rule, gen, list(metrics), prompts, [ex.input for ex in inputs],
                             [list(ex.references) for ex in inputs])


class TextMetricsScorer:
    """``text_metrics_scorer``'s scorer. It keeps what it decoded last beside the inputs and
    references, so a choice made with it can be re-examined without decoding again."""

    def __init__(self, blackbox: BlackBox, rule: CombinationRule, generation: GenerationConfig, metrics: list[str],
                 prompts: list[list[int]], inputs: list[str], references: list[list[str]]):
        self.blackbox, self.rule, self.generation, self.metrics = blackbox, rule, generation, metrics
        self.prompts, self.inputs, self.references = prompts, inputs, references
        self.last_outputs: list[str] = []
        self.last_outputs_many: list[list[str]] = []

    def __call__(self, reweighter: Reweighter | None, with_rule: CombinationRule | None = None) -> dict[str, float]:
        decoder = Decoder(self.blackbox, reweighter, with_rule or self.rule, self.generation)
        self.last_outputs = [g.text for g in decoder.generate_ids(self.prompts)]
        return self._scores(self.last_outputs)

    def many(self, reweighter: Reweighter | None, rules: Sequence[CombinationRule],
             progress: bool = False) -> list[dict[str, float]]:
        """The scores under each of ``rules``, as one call per rule would give, decoding the prompts
        once per batch and forking (``Decoder.generate_ids_many``); ``last_outputs_many`` keeps the texts."""
        decoder = Decoder(self.blackbox, reweighter, self.rule, self.generation)
        self.last_outputs_many = [[g.text for g in out] for out in decoder.generate_ids_many(self.prompts, rules, progress)]
        return [self._scores(outputs) for outputs in self.last_outputs_many]

    def _scores(self, outputs: list[str]) -> dict[str, float]:
        return {m: s.score for m, s in evaluate(outputs, self.references, self.metrics).items()}


def text_metric_selector(
    blackbox: BlackBox,
    template: PromptTemplate,
    held_out: Sequence[Example],
    metric: str,
    rule: CombinationRule,
    generation: GenerationConfig | None = None,
    max_inputs: int = 100,
    renamed: float = 0.0,
    seed: int = 0,
    renamed_syllables: str = "held-out",
) -> Callable[..., float]:
    """A scorer (higher is better) of a reweighter: ``metric`` of its greedy outputs, as
    ``text_metrics_scorer`` computes it."""
    scores = text_metrics_scorer(blackbox, template, held_out, [metric], rule, generation, max_inputs, renamed, seed,
                                 renamed_syllables)
    return lambda reweighter, with_rule=None: scores(reweighter, with_rule)[metric]


def held_out_scorers(config: Any, blackbox: BlackBox, template: PromptTemplate, held_out: Sequence[Example],
                     generation: GenerationConfig | None = None) -> dict[str, Callable[..., float]]:
    """The scorers ``train`` needs for a ``TrainConfig``'s ``select_by`` (``selector``) and
    ``strength_by`` (``strength_selector``): none for selection by loss."""
    rule = config.combination(blackbox.tokenizer.eos_token_id)
    out: dict[str, Callable[..., float]] = {}
    if config.select_by != "loss":
        out["selector"] = text_metric_selector(blackbox, template, held_out, config.select_by, rule, generation,
                                               config.select_inputs, config.select_renamed, config.seed,
                                               config.select_renamed_syllables)
    if config.strength_by != "loss":
        out["strength_selector"] = text_metrics_scorer(blackbox, template, held_out, metric_names(config.strength_by),
                                                       rule, generation, config.select_inputs, config.select_renamed,
                                                       config.seed, config.select_renamed_syllables)
    return out


def demonstration_counts(value: int | str | Sequence[int]) -> int | tuple[int, ...]:
    """A demonstration count, or sorted candidate counts to choose among on held-out data, from an
    int, a sequence or text such as ``"1,3"``; a ValueError names what is wrong."""
    try:
        parts = value.split(",") if isinstance(value, str) else value
        counts = tuple(sorted({int(k) for k in parts})) if isinstance(parts, (list, tuple)) else (int(parts),)
    except (TypeError, ValueError):
        counts = ()
    if not counts or counts[0] < 0:
        raise ValueError(f"demonstrations must be a count >= 0 or several counts, got {value!r}")
    return counts[0] if len(counts) == 1 else counts


def fix_demonstrations(
    blackbox: BlackBox,
    template: PromptTemplate,
    train: Sequence[Example],
    held_out: Sequence[Example],
    counts: int | Sequence[int],
    seed: int,
    generation: GenerationConfig | None = None,
    metric: str = "BLEU",
    max_inputs: int = 100,
    pool: Sequence[Example] | None = None,
) -> tuple[PromptTemplate, list[Example], dict[str, Any]]:
    """Fix K solved training rows (drawn by ``seed``) at the head of every prompt; return the
    template with them, the training rows left, and what was chosen.

    ``counts`` is one K, or candidates chosen among by ``metric`` of the black box's own greedy
    outputs on held-out inputs (no plugin yet): how many demonstrations help depends on the task
    and the black box (SmolLM2 on E2E writes best after one and rambles after three, while on
    WebNLG and CommonGen three beat one by far), and a plugin trained on top of the best prompt
    starts from the best place. Ties go to fewer demonstrations (shorter prompts). ``pool``: the
    rows to draw from, as in ``draw_demonstrations``."""
    chosen = demonstration_counts(counts)
    options = [chosen] if isinstance(chosen, int) else list(chosen)
    scores: dict[int, float] = {}
    if len(options) > 1:
        for k in options:
            demos, _ = draw_demonstrations(train, k, seed, pool)
            scorer = text_metric_selector(blackbox, template.with_demonstrations(demos) if k else template, held_out,
                                          metric, BlackBoxOnly(), generation, max_inputs)
            scores[k] = scorer(None)
    best = max(options, key=lambda k: (scores.get(k, 0.0), -k))
    info: dict[str, Any] = {"demonstrations": best}
    if scores:
        info["demonstration_scores"] = {f"{k}": round(v, 4) for k, v in scores.items()}
        info["demonstrations_chosen_by"] = f"held-out {metric} of the black box alone on {max_inputs} inputs at most"
    if not best:
        return template, list(train), info
    demos, rest = draw_demonstrations(train, best, seed, pool)
    return template.with_demonstrations(demos), rest, info


STRENGTH_OUTPUTS_NAME = "strength_outputs.json"  # a plugin's held-out texts decoded at each candidate strength


def _held_out_inputs(folder: str | Path) -> tuple[list, list] | None:
    """The held-out inputs and references a plugin's strength choice decoded (None: not recorded)."""
    path = Path(folder) / STRENGTH_OUTPUTS_NAME
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record.get("inputs"), record.get("references")


PLUGIN_MARGIN = 0.02  # held-out mixes closer than this are a tie: two trainings of one plugin differ by about 2%


def ties_with_best(mixes: Sequence[float], margin: float = PLUGIN_MARGIN) -> list[int]:
    """The plugins (indexes into ``mixes``, as ``choose_plugin`` returns them) held-out text cannot tell from
    the best one: their mixes within ``margin`` of it.

    >>> ties_with_best([0.968, 0.984, 0.90])
    [0, 1]
    """
    return [i for i, mix in enumerate(mixes) if mix >= max(mixes) - margin]


def choose_plugin(folders: Sequence[str | Path], margin: float = PLUGIN_MARGIN) -> tuple[int, list[float]]:
    """Which of several trained plugins writes the best held-out text: (index, each one's mix).

    Every folder must hold a strength choice by text (``strength_by`` a metric or a mix), made on
    the same held-out inputs; a plugin's score is its metrics at the strength it chose, each divided
    by the best plugin's, averaged (the strength choice's mix). The first plugin (the default) is
    kept unless another beats its mix by more than ``margin``: two trainings of one plugin already
    differ by about 2% (BENCHMARKS.md), so smaller leads are noise."""
    if not folders:
        raise ValueError("choose_plugin needs at least one plugin folder")
    held = [held_out_text_scores(folder) for folder in folders]
    recorded = [(f, r) for f in folders if (r := _held_out_inputs(f)) is not None]
    for folder, record in recorded[1:]:  # scores on different inputs would not compare
        if record != recorded[0][1]:
            raise ValueError(f"{folder} chose its strength on other held-out inputs than {recorded[0][0]}: their "
                             "held-out scores do not compare; train both on the same held-out rows")
    shared = [m for m in held[0] if all(m in h for h in held)]
    if not shared:
        raise ValueError(f"the plugins {[str(f) for f in folders]} share no held-out text metric to compare them by")
    metrics = [m for m in shared if max(h[m] for h in held) > 0]
    if not metrics:  # every plugin scores 0 on every metric: a tie, the default stays
        return 0, [1.0] * len(held)
    best = {m: max(h[m] for h in held) for m in metrics}
    mixes = [sum(h[m] / best[m] for m in metrics) / len(metrics) for h in held]
    challenger = max(range(1, len(mixes)), key=lambda i: mixes[i], default=0)
    pick = challenger if challenger and mixes[challenger] > mixes[0] + margin else 0  # as the strength choice's margin
    return pick, mixes


def held_out_text_scores(folder: str | Path) -> dict[str, float]:
    """A plugin's held-out text metrics at the strength it decodes with (its strength choice's record)."""
    sidecar = read_sidecar(folder)
    chosen = sidecar.get("strength_selection")
    if not chosen or "scores" not in chosen:
        raise ValueError(f"{folder} holds no strength choice by held-out text; train it with strength_by set "
                         "to a text metric (e.g. 'BLEU+METEOR+ROUGE-L+CIDEr') to compare it with others")
    got = chosen["scores"][f"{float(sidecar['train_config']['alpha']):g}"]
    return {k: float(v) for k, v in got.items()} if isinstance(got, dict) else {chosen["by"]: float(got)}

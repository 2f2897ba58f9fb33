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
3. otherwise bounds the new mixes from the old mixes and the candidate's old and new held-out scores
   alone (`choice_stands`: the per-metric shares are not recorded, so every split of each old mix over
   the metrics is allowed) and, only if the same plugin is kept under every allowed split, restamps the
   cell, with the new candidate's test result where that plugin is the candidate.

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
from restamp_gated import finished_cells, method_before, restamp_arguments, stamp, untried_why

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


def most_mix(rates: list[float], mix: float) -> float:
    """The highest mean of min(1, c_m * x_m) over shares x_m in [0, 1] with mean ``mix``. With c_m =
    max(1, 1/r_m): another candidate's new mix when the changed candidate's metric m moved by r_m (where
    it fell, the best score may have fallen with it, raising the others' shares by at most 1/r_m); with
    c_m = max(1, r_m): the changed candidate's own new mix at most. Each term rises at rate c_m until it
    reaches 1, so filling the steepest first is optimal.

    >>> round(most_mix([max(1, 1 / r) for r in [1.094, 0.627, 1.067, 0.979]], 0.5962), 4)
    0.6947
    """
    n, left, value = len(rates), mix * len(rates), 0.0
    for c in sorted(rates, reverse=True):
        take = min(left, 1.0 / c)
        value, left = value + c * take, left - take
    return min(1.0, value / n) if n else 0.0


def least_linear(rates: list[float], mix: float) -> float:
    """The lowest mean of a_m * x_m over shares x_m in [0, 1] with mean ``mix``: with a_m = 1/max(1, r_m),
    another candidate's new mix at least (where the changed candidate rose past the best, that best rose
    by at most r_m).

    >>> least_linear([1.0, 0.5], 0.5)
    0.25
    """
    n, left, value = len(rates), mix * len(rates), 0.0
    for a in sorted(rates):
        take = min(left, 1.0)
        value, left = value + a * take, left - take
    return value / n if n else 0.0


def choice_stands(mixes: list[float], index: int, ratios: list[float], chosen: int) -> tuple[bool, dict]:
    """Whether ``selection.choose_plugin`` picks ``chosen`` again after candidate ``index``'s held-out
    metrics moved by ``ratios``, for every split of the old ``mixes`` over the metrics; with the bounds."""
    lo, hi = [], []
    for i, mix in enumerate(mixes):
        if i == index:
            lo.append(least_mix(ratios, mix))
            hi.append(most_mix([max(1.0, r) for r in ratios], mix))
        else:
            lo.append(least_linear([1.0 / max(1.0, r) for r in ratios], mix))
            hi.append(most_mix([max(1.0, 1.0 / r) for r in ratios], mix))
    rest = [i for i in range(1, len(mixes)) if i != chosen]
    if chosen == 0:  # no challenger may lead the default by more than the margin
        stands = all(hi[i] <= lo[0] + MARGIN for i in rest)
    else:  # the same challenger, strictly ahead of the others, and beyond the margin over the default
        stands = lo[chosen] > hi[0] + MARGIN and all(lo[chosen] > hi[i] for i in rest)
    return stands, {"at_least": lo, "at_most": hi}


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
            elif (why := untried_why(cell)) is not None:
                line["result"] = "restamped"
                record["why"] = why
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
                elif all(was[m] > 0 and now[m] > 0 for m in was):
                    ratios = [now[m] / was[m] for m in sorted(was)]
                    stands, line["bounds"] = choice_stands(mixes, index, ratios, choice["chosen"])
                    kept = choice["chosen"] == index
                    if stands:
                        line["result"] = "restamped" + (" with the new candidate's result" if kept else "")
                        record["why"] = ("for every split of the recorded held-out mixes over the metrics, the candidate's "
                                         "old and new held-out scores leave the choice as it was "
                                         f"(mixes at least {[round(v, 3) for v in line['bounds']['at_least']]}, at most "
                                         f"{[round(v, 3) for v in line['bounds']['at_most']]}, margin {MARGIN})"
                                         + (f": it is kept again, and its test result is the {SMOOTHED} cell's" if kept
                                            else ": the same plugin is kept and this result stands"))
                        choice["held_out_mix_bounds"] = line["bounds"]
                        if kept:
                            take_result(cell, new)
                    else:
                        line["result"] = "left alone: the bounds do not prove the same choice"
                else:
                    line["result"] = "left alone: a held-out score of 0 leaves the shares unbounded"
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

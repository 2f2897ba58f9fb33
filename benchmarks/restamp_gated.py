"""Carry plugin cells over the whole-vocabulary candidate's coverage gate where they would not change.

On 2026-12-03 the default recipe started trying its whole-vocabulary candidate only where fewer than
85% of the training targets lie in the black box's top-20 support (`try_blackbox_weight_below`).
That setting is part of the recipe, so every plugin cell made before it reads as made with other
settings and the bench would run it again. Where the gate lets the candidate through, a rerun trains
the same three candidates (their training keys do not include the gate) and chooses among them
as before: the result is the one already in the cell. This script checks exactly that for each
finished cell of a method and, only where both checks pass, writes the current settings key into
it, with a `restamped` record saying why:

1. the cell's key equals the key its method has with the gate turned off (nothing else changed), and
   the cell tried the whole-vocabulary candidate;
2. the coverage the gate reads, for that cell's seed, prompt (its demonstrations, drawn as the
   bench draws them) and rows, is below the threshold.

Cells failing either check are left alone (the bench reruns them). Run:
python benchmarks/restamp_gated.py benchmarks/scoreboard.yaml --tasks commongen,adidas [--dry-run]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import yaml

from logitplug import load_blackbox
from logitplug._io import atomic_write_json
from logitplug.bench import parse_config
from logitplug.bench.methods import CellContext, with_demonstrations
from logitplug.bench.runner import blackbox_label, cell_path, demo_pool, prepare_task, settings_key
from logitplug.data import TASKS, get_template
from logitplug.decode import GenerationConfig
from logitplug.recipes import RECIPES
from logitplug.train import coverage_gate


def restamp_arguments(doc: str) -> argparse.Namespace:
    """The command line every restamp script takes: a bench config, its tasks, one method, --dry-run."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--tasks", required=True, help="comma-separated")
    ap.add_argument("--method", default="plugin")
    ap.add_argument("--dry-run", action="store_true", help="report, write nothing")
    return ap.parse_args()


def method_before(config: str, method_name: str, **recipe_change) -> tuple[object, object]:
    """The bench config and its method ``method_name`` as they read with ``recipe_change`` undone on
    the method's recipe: the settings key a cell made before that change carries."""
    recipe = next(m for m in parse_config(yaml.safe_load(Path(config).read_text())).methods if m.name == method_name).recipe
    saved = RECIPES[recipe.name]
    RECIPES[recipe.name] = replace(recipe, **recipe_change)
    try:
        old_cfg = parse_config(yaml.safe_load(Path(config).read_text()))
    finally:
        RECIPES[recipe.name] = saved
    return old_cfg, next(m for m in old_cfg.methods if m.name == method_name)


def finished_cells(cfg, method, task: str):
    """Each (black box, seed, path, record) of ``method``'s finished cells on ``task``, whatever their key
    (in a training-size sweep, one per size)."""
    for bb_name in cfg.blackboxes:
        for seed in cfg.seeds:
            path = cell_path(cfg, task, bb_name, method.name, seed)
            for found in [path] + sorted(path.parent.glob(f"{path.stem}-n*.json")):
                if found.exists():
                    yield bb_name, seed, found, json.loads(found.read_text())


def untried_why(cell: dict) -> str | None:
    """Why a change to the whole-vocabulary candidate's training leaves ``cell`` standing, where the
    coverage gate left that candidate out of it (None where the cell tried it)."""
    choice = cell["info"].get("reweighter_choice")
    not_tried = choice.get("not_tried", "") if isinstance(choice, dict) else ""
    if "blackbox-weight" not in str(not_tried):
        return None
    return (f"{not_tried}: the change concerns that candidate's training alone, so a rerun trains and chooses "
            "among the same candidates and this result stands")


def stamp(path: Path, cell: dict, new_key: str, record: dict, dry_run: bool) -> None:
    """Write ``new_key`` into ``cell`` with ``record`` saying why, to ``path`` unless ``dry_run``."""
    cell["settings_key"] = new_key
    cell["restamped"] = record
    if not dry_run:
        atomic_write_json(path, cell, indent=2, default=str)


def carry_over(cfg, method, task: str, new_key: str, old_key: str, why_unchanged, script: str, left_alone: str,
               dry_run: bool) -> None:
    """Restamp each of ``method``'s finished cells on ``task`` made under ``old_key`` that ``why_unchanged(cell)``
    says the change leaves as they are (None: it does not; ``left_alone`` says why), one JSON line per cell."""
    for _, _, path, cell in finished_cells(cfg, method, task):
        line = {"cell": str(path)}
        if cell.get("settings_key") == new_key:
            line["result"] = "current already"
        elif cell.get("settings_key") != old_key:
            line["result"] = "left alone: made with other settings than the change's absence"
        elif (why := why_unchanged(cell)) is None:
            line["result"] = f"left alone: {left_alone}"
        else:
            line["result"] = "restamped"
            record = {"from_settings_key": old_key, "script": script, "why": why}
            if "restamped" in cell:  # an earlier carry-over stays on record
                record["before"] = cell["restamped"]
            stamp(path, cell, new_key, record, dry_run)
        print(json.dumps(line), flush=True)


def main() -> None:
    args = restamp_arguments(__doc__)

    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    method = next(m for m in cfg.methods if m.name == args.method)
    recipe = method.recipe
    if recipe is None or not getattr(method, "tried_blackbox_weight", 0) or recipe.try_blackbox_weight_below >= 1:
        raise SystemExit(f"{args.method}: its recipe has no coverage gate on a whole-vocabulary candidate")
    below = recipe.try_blackbox_weight_below
    old_cfg, old_method = method_before(args.config, args.method, try_blackbox_weight_below=1.0)  # before the gate
    bb_cache: dict[str, object] = {}
    for task in args.tasks.split(","):
        data = prepare_task(cfg, task, cfg.data.get("train_rows"))
        task_data = {(task, None): data}
        new_key, old_key = settings_key(cfg, method, task), settings_key(old_cfg, old_method, task)
        for bb_name, seed, path, cell in finished_cells(cfg, method, task):
            line = {"cell": str(path)}
            choice = cell["info"].get("reweighter_choice")
            tried = isinstance(choice, dict) and any(c.get("train", {}).get("blackbox_weight") for c in choice["candidates"])
            if cell.get("settings_key") == new_key:
                line["result"] = "current already"
            elif cell.get("settings_key") != old_key or not tried:
                line["result"] = "left alone: made with other settings than the gate's absence, or without the candidate"
            else:
                if bb_name not in bb_cache:
                    bb_cache.clear()
                    bb_cache[bb_name] = load_blackbox(bb_name)
                bb = bb_cache[bb_name]
                ctx = CellContext(
                    blackbox=bb, task=task, train=data.train, validation=data.validation, test=data.test,
                    template=get_template(cfg.templates.get(task, TASKS[task].template)), seed=seed,
                    generation=GenerationConfig(**cfg.generation_for(task)),
                    models_dir=cfg.output_dir / "models" / task / blackbox_label(bb_name), train_overrides=cfg.train,
                    reweighter_overrides=cfg.reweighter, grid=cfg.grid, progress=False,
                    demo_pool=demo_pool(cfg, task, task_data), choice_pool=data.choice_pool, blackbox_name=bb_name)
                count = cell["info"].get("method_demonstrations", cell["info"]["demonstrations"])
                prompted = with_demonstrations(ctx, count)[0] if count else ctx  # one count: drawn, not chosen again
                coverage, k = method.support_coverage(prompted)
                line["support_coverage"] = round(coverage, 4)
                reason = coverage_gate(coverage, below, k)
                if reason:
                    line["result"] = f"left alone: the gate would skip the candidate ({reason})"
                else:
                    line["result"] = "restamped"
                    cell["info"]["support_coverage"] = round(coverage, 4)
                    stamp(path, cell, new_key, {
                        "from_settings_key": old_key, "script": "benchmarks/restamp_gated.py",
                        "why": (f"{coverage:.1%} of the training targets lie in the black box's top-{k} behind this cell's "
                                f"prompt ({count} demonstrations), below the gate's {below:.0%}: the gated recipe trains "
                                "and chooses among the same candidates, so this result stands")}, args.dry_run)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

"""How many fixed demonstrations each task's prompt should hold: the black box alone, decoded on
the bench config's validation rows under each candidate count (what ``logitplug train
--demonstrations 1,3`` and the default recipe do before training).

    python benchmarks/demo_choice.py benchmarks/paper-grid.yaml --tasks e2e,webnlg,commongen --seed 0

Writes benchmarks/results/demo-choice.json and .md; the same demonstrations as icl-K / plugin
cells with that seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from logitplug.bench.runner import load_config, prepare_task
from logitplug.blackbox import load_blackbox
from logitplug.data import TASKS, get_template
from logitplug.decode import GenerationConfig
from logitplug.recipes import DEFAULT_RECIPE, get_recipe
from logitplug.selection import fix_demonstrations

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--counts", default=None, help="comma-separated candidates (default: the default recipe's)")
    ap.add_argument("--inputs", type=int, default=100, help="validation inputs decoded per count")
    ap.add_argument("--out", default="demo-choice", help="results name under benchmarks/results (.json and .md)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    counts = tuple(int(k) for k in args.counts.split(",")) if args.counts else get_recipe(DEFAULT_RECIPE).demonstrations
    tasks = args.tasks.split(",") if args.tasks else cfg.tasks
    rows = []
    for bb_name in cfg.blackboxes:
        bb = load_blackbox(bb_name)
        for task in tasks:
            data = prepare_task(cfg, task, cfg.data.get("train_rows") if isinstance(cfg.data.get("train_rows"), int) else None)
            template = get_template(str(cfg.templates.get(task, TASKS[task].template)))
            t0 = time.perf_counter()
            _, _, info = fix_demonstrations(bb, template, data.train, data.validation, counts, args.seed,
                                            GenerationConfig(**cfg.generation), max_inputs=args.inputs)
            rows.append({"task": task, "blackbox": bb_name, "seed": args.seed, "inputs": args.inputs, **info,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    command = "python benchmarks/demo_choice.py " + " ".join(
        [str(args.config)] + [f"--{k} {v}" for k, v in vars(args).items() if k != "config" and v is not None and (k, v) != ("out", "demo-choice")])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    lines = [f"Command: `{command}`", "", "| task | black box | seed | validation BLEU by count (black box alone) | chosen | s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        shown = ", ".join(f"{k}: {v:.2f}" for k, v in r.get("demonstration_scores", {}).items())
        lines.append(f"| {r['task']} | {r['blackbox']} | {r['seed']} | {shown} | **{r['demonstrations']}** | {r['seconds']} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""E2E slot error rate split by whether the test input's venue name occurs in the training rows.

Half of the E2E test split's venue names never occur in its training part; a plugin that learned
the training names as vocabulary fails on exactly those inputs. This splits finished bench cells'
SER into seen / unseen names, using the bench config's own training rows.

    python benchmarks/ser_by_novelty.py benchmarks/e2e-recipes.yaml \
        benchmarks/runs/e2e-recipes/cells/e2e/smollm2-135m/*/seed0.json

Writes a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from logitplug.bench.runner import parse_config, prepare_task
from logitplug.eval import parse_mr, slot_error_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="the bench config the cells came from (for its training rows)")
    ap.add_argument("cells", type=Path, nargs="+", help="cell JSON files (E2E)")
    args = ap.parse_args()
    cfg = parse_config(yaml.safe_load(args.config.read_text()))
    rows = cfg.data.get("train_rows")
    data = prepare_task(cfg, "e2e", rows if isinstance(rows, int) else None)
    seen = {parse_mr(e.input).get("name") for e in data.train}
    print("| cell | inputs with a seen name | SER seen | inputs with an unseen name | SER unseen | SER all |")
    print("|---|---|---|---|---|---|")
    for path in args.cells:
        cell = json.loads(path.read_text())
        gens = cell["generations"]
        split = {True: [], False: []}
        for g in gens:
            split[parse_mr(g["input"]).get("name") in seen].append(g)

        def ser(group: list[dict]) -> float:
            return slot_error_rate([g["output"] for g in group], [g["input"] for g in group], data.venue_names).score

        label = f"{cell['method']} seed {cell['seed']}" if cell.get("seed") is not None else cell["method"]
        print(f"| {label} | {len(split[True])} | {ser(split[True]):.1f} | {len(split[False])} | "
              f"{ser(split[False]):.1f} | {ser(gens):.1f} |")


if __name__ == "__main__":
    main()

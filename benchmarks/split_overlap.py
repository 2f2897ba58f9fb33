"""How often a held-out answer is, word for word, a training answer, per task and seed.

Question: every validation choice (epochs, reweighting strength, candidate reweighter,
demonstration count) is only as good as validation's likeness to the test. If validation answers
can be recalled from training while test answers cannot, the choices favour memorizing. Adidas
sells one product in several colours under one description: split by input alone (as until
session 25), the same description landed on both sides of the train/validation split.

For each task and seed: the share of validation rows whose target is also a training target, and
of test inputs with any reference that is a training target; for Adidas also the split by input
alone, which the default no longer uses.

Run: python benchmarks/split_overlap.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse

from _results import save
from logitplug.data import TASKS, load_adidas, load_task, split_by_input


def overlap(train, validation, test) -> dict[str, float]:
    seen = {e.target for e in train}
    return {"validation_rows": len(validation),
            "validation_in_train": 100 * sum(e.target in seen for e in validation) / len(validation),
            "test_inputs": len(test),
            "test_in_train": 100 * sum(any(r in seen for r in e.references) for e in test) / len(test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for task in ("e2e", "webnlg", "commongen", "adidas"):
        for seed in seeds:
            splits = load_task(task, seed=seed)
            rows.append({"task": task, "split": f"default (splits version {TASKS[task].splits_version})", "seed": seed,
                         **overlap(splits["train"], splits["validation"], splits["test"])})
            if task == "adidas":
                train, validation = split_by_input(load_adidas()[:-100], 0.8, seed)
                rows.append({"task": task, "split": "by input alone (until session 25)", "seed": seed,
                             **overlap(train, validation, splits["test"])})
    table = ["| task | train/validation split | seed | validation rows | validation targets in training | "
             "test inputs | test inputs with a reference in training |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['task']} | {r['split']} | {r['seed']} | {r['validation_rows']} | {r['validation_in_train']:.1f}% | "
              f"{r['test_inputs']} | {r['test_in_train']:.1f}% |" for r in rows]
    intro = ("# Held-out answers that are training answers, word for word\n\n" + __doc__.split("\n\n")[1]
             + "\n\nWhole splits (the scoreboard then cuts training to 800 rows and validation to 100 inputs).")
    save("split-overlap", rows, intro, "\n".join(table))


if __name__ == "__main__":
    main()

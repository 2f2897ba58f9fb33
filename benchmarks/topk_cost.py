"""What closed-API access costs: the same methods with full logits vs top-k log-probs.

Reads the finished cells of a bench config whose black boxes are one model seen with full logits
and through its top-k (``NAME``, ``NAME@top20``, ``NAME@top5``: the exact arithmetic of the
OpenAI-compatible client), and reports, per method and access level, the test metrics, their
change against full access, and how many test outputs are word for word those of full access.

    python benchmarks/topk_cost.py benchmarks/e2e-topk.yaml --seeds 0

Writes benchmarks/results/topk-cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import save  # noqa: E402

from logitplug.blackbox import split_topk  # noqa: E402
from logitplug.bench.runner import blackbox_label, cell_path, load_config  # noqa: E402

METRICS = ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr", "SER"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="bench config with one model at several access levels")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    ap.add_argument("--task", default=None, help="task (default: the config's first)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    task = args.task or cfg.tasks[0]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(cfg.seeds)
    full = next((b for b in cfg.blackboxes if split_topk(b)[1] is None), None)
    if full is None:
        raise SystemExit("the config needs the full-logit black box (a name without @topK) as the reference")

    def read_cell(bb: str, method, seed: int) -> dict | None:
        path = cell_path(cfg, task, bb, method.name, seed if method.seeded else None)
        return json.loads(path.read_text()) if path.exists() else None

    data = []
    for method in cfg.methods:
        full_cells = {s: read_cell(full, method, s) for s in seeds}
        for bb in cfg.blackboxes:
            per_seed = []
            for s in seeds:
                cell, ref = read_cell(bb, method, s), full_cells[s]
                if cell is None or ref is None:
                    continue
                same = sum(a["output"] == b["output"] for a, b in zip(cell["generations"], ref["generations"]))
                info = cell.get("info") or {}
                per_seed.append({"seed": cell["seed"], "scores": cell["scores"], "same_as_full": same,
                                 "n": len(cell["generations"]), "wall_seconds": cell["wall_seconds"],
                                 "strength": info.get("strength"), "demonstrations": info.get("demonstrations"),
                                 "best_epoch": info.get("best_epoch"), "rule": info.get("rule")})
                if not method.seeded:
                    break
            if not per_seed:
                continue
            mean = {m: statistics.mean(p["scores"][m] for p in per_seed) for m in METRICS if m in per_seed[0]["scores"]}
            data.append({"method": method.name, "blackbox": blackbox_label(bb), "runs": per_seed, "mean": mean})

    by_key = {(d["method"], d["blackbox"]): d for d in data}
    header = ("| method | access | runs | " + " | ".join(METRICS) + " | BLEU vs full | outputs as full's | strength | wall s |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for d in data:
        ref = by_key.get((d["method"], blackbox_label(full)))
        top_k = split_topk(d["blackbox"])[1]
        access = "full logits" if top_k is None else f"top{top_k}"
        delta = "" if ref is None or ref is d else f"{d['mean']['BLEU'] - ref['mean']['BLEU']:+.2f}"
        same = sum(p["same_as_full"] for p in d["runs"])
        n = sum(p["n"] for p in d["runs"])
        strengths = ",".join(sorted({str(p["strength"]) for p in d["runs"] if p["strength"] is not None}))
        wall = statistics.mean(p["wall_seconds"] for p in d["runs"])
        lines.append(f"| {d['method']} | {access} | {len(d['runs'])} | "
                     + " | ".join(f"{d['mean'][m]:.2f}" if m in d["mean"] else "" for m in METRICS)
                     + f" | {delta} | {same} / {n} | {strengths} | {wall:.0f} |")
    intro = (f"Quality cost of top-k access on {task} ({cfg.name}; seeds {', '.join(map(str, seeds))}): the same "
             f"black box with full logits and seen only through its top-k log-probs; mean over seeds. SER: lower is "
             f"better. 'outputs as full's': test outputs identical, word for word, to the same method's with full logits.")
    save("topk-cost", {"config": str(args.config), "task": task, "seeds": seeds, "cells": data}, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

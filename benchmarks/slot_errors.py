"""E2E slot errors split by kind: values of the input left out (missing) against attributes the
input lacks (invented), per slot, for finished bench cells. SER adds the two; a plugin trained on
few rows can lower one and raise the other, and "at least as faithful" means not inventing.

    python benchmarks/slot_errors.py benchmarks/datasize.yaml --name slot-errors-datasize \
        benchmarks/runs/datasize/cells/e2e/smollm2-135m/*/*.json

Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import prepare_task  # noqa: E402
from logitplug.eval import e2e_slot_errors  # noqa: E402

SLOTS = ["name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near"]


def _label(path: Path, cell: dict) -> str:
    size = f" n{cell['sweep_size']}" if cell.get("sweep_size") else ""
    seed = "" if cell.get("seed") is None else f" seed {cell['seed']}"
    return f"{cell['method']}{size}{seed} ({path.parents[4].name if len(path.parents) > 4 else path.parent})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="the bench config the cells came from (for the dataset's venue names)")
    ap.add_argument("cells", type=Path, nargs="+", help="E2E cell JSON files")
    ap.add_argument("--name", default="slot-errors", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    cfg = load_config(args.config)
    names = prepare_task(cfg, "e2e", 100).venue_names  # every split's names: the set is the same for any size
    data, lines = [], ["| cell | inputs | slots | missing /100 slots | invented /100 slots | SER | most missed | most invented |",
                       "|---|---|---|---|---|---|---|---|"]
    for path in args.cells:
        cell = json.loads(path.read_text())
        if cell.get("task") != "e2e":
            continue
        missing, invented = collections.Counter(), collections.Counter()
        slots = 0
        for g in cell["generations"]:
            errors = e2e_slot_errors(g["input"], g["output"], names)
            slots += errors.total_slots
            missing.update(m.split("=")[0] for m in errors.missing)
            invented.update(h.split("=")[0] for h in errors.hallucinated)
        per_100 = {"missing": 100 * sum(missing.values()) / slots, "invented": 100 * sum(invented.values()) / slots}
        top = lambda c: ", ".join(f"{s} {n}" for s, n in c.most_common(3)) or "—"  # noqa: E731
        label = _label(path, cell)
        lines.append(f"| {label} | {len(cell['generations'])} | {slots} | {per_100['missing']:.1f} | "
                     f"{per_100['invented']:.1f} | {per_100['missing'] + per_100['invented']:.1f} | {top(missing)} | "
                     f"{top(invented)} |")
        data.append({"cell": str(path), "label": label, "slots": slots, "per_100_slots": per_100,
                     "missing_by_slot": dict(missing), "invented_by_slot": dict(invented),
                     "recorded_SER": cell["scores"].get("SER")})
    intro = ("# E2E slot errors by kind\n\nMissing: a value of the input the output does not realize; invented: an "
             "attribute value (or a venue name of the dataset) the input does not hold. Their sum per 100 slots is "
             "the slot error rate (SER).")
    save(args.name, data, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

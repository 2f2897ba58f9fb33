"""Where benchmark scripts leave what they measured: benchmarks/results/NAME.json and NAME.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# the four text metrics, and the slot error rate (E2E's faithfulness; lower is better)
METRICS = ["BLEU", "METEOR", "ROUGE-L", "CIDEr", "SER"]
LOWER_IS_BETTER = {"SER"}


def beats(metric: str, a: float, b: float) -> bool:
    """Whether score ``a`` is better than ``b`` on ``metric`` (lower is better for error rates)."""
    return a < b if metric in LOWER_IS_BETTER else a > b


def save(name: str, data: Any, intro: str, table: str) -> None:
    """Print ``table`` and write ``data`` as JSON and ``intro`` + the exact command + ``table`` as Markdown."""
    print(table)
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    command = " ".join(["python", *sys.argv])
    (out / f"{name}.md").write_text(f"{intro}\n\nCommand: `{command}`\n\n{table}\n")


def finished_cells(cfg: Any, task: str, blackbox: str, method: Any) -> dict[int | None, dict]:
    """A method's cells per seed (None: unseeded) made with the config's current settings; cells
    made with other settings are left out."""
    from logitplug.bench.runner import cell_path, current_cell, settings_key

    key = settings_key(cfg, method, task)
    found = {s: current_cell(cell_path(cfg, task, blackbox, method.name, s), key)
             for s in (cfg.seeds if method.seeded else [None])}
    return {s: cell for s, cell in found.items() if cell is not None}


def cell_sizes(cfg: Any, cell: dict) -> tuple[int | None, int | None]:
    """The training rows and test inputs a cell ran with (a split smaller than the config's sizes
    runs on all it has); the config's sizes for cells written before they were recorded."""
    return cell.get("train_rows", cfg.data.get("train_rows")), cell.get("test_inputs", cfg.data.get("test_inputs"))

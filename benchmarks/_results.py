"""Where benchmark scripts leave what they measured: benchmarks/results/NAME.json and NAME.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# the four text metrics, and the slot error rate (E2E's faithfulness; lower is better)
METRICS = ["BLEU", "METEOR", "ROUGE-L", "CIDEr", "SER"]
LOWER_IS_BETTER = {"SER"}


def save(name: str, data: Any, intro: str, table: str) -> None:
    """Print ``table`` and write ``data`` as JSON and ``intro`` + the exact command + ``table`` as Markdown."""
    print(table)
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    command = " ".join(["python", *sys.argv])
    (out / f"{name}.md").write_text(f"{intro}\n\nCommand: `{command}`\n\n{table}\n")

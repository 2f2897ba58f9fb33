"""What choosing the reweighting strength on renamed held-out inputs (``select_renamed``) changed on
the scoreboard: each plugin cell as an earlier commit has it (strength chosen on held-out inputs
as they are) beside the cell now (half of them with pseudo-names for their copied names). Both
use the same trained weights (the bench shares them); only the strength choice and so the test
decode differ. Writes benchmarks/results/strength-renamed.{json,md}.

    python benchmarks/strength_renamed.py benchmarks/scoreboard.yaml --before 8d581ce
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import METRICS, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label, cell_path, current_cell, settings_key  # noqa: E402


def cell_at(revision: str, path: Path) -> dict | None:
    shown = subprocess.run(["git", "show", f"{revision}:{path.as_posix()}"], capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--before", required=True, help="git revision holding the cells chosen on held-out inputs as they are")
    ap.add_argument("--plugin", default="plugin")
    args = ap.parse_args()
    cfg = load_config(args.config)
    method = next(m for m in cfg.methods if m.name == args.plugin)
    rows, lines = [], []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            key = settings_key(cfg, method, task)
            pairs = []
            for seed in cfg.seeds:
                path = cell_path(cfg, task, bb, method.name, seed)
                now = current_cell(path, key)
                before = cell_at(args.before, path.relative_to(Path.cwd()) if path.is_absolute() else path)
                if not now or not before or before.get("settings_key") == key:
                    continue
                pairs.append((seed, before, now))
            if not pairs:
                continue
            metrics = [m for m in METRICS if m in pairs[0][2]["scores"]]
            lines += [f"## {task} · {bb}", "",
                      "| seed | strength before → now | " + " | ".join(f"{m} before → now" for m in metrics) + " |",
                      "|---|---|" + "---|" * len(metrics)]
            for seed, before, now in pairs:
                sb, sn = before["info"].get("strength"), now["info"].get("strength")
                lines.append(f"| {seed} | {sb:g} → {sn:g} | " + " | ".join(
                    f"{before['scores'][m]:.2f} → {now['scores'][m]:.2f}" for m in metrics) + " |")
                rows.append({"task": task, "blackbox": bb, "seed": seed, "strength_before": sb, "strength_now": sn,
                             "before": {m: before["scores"][m] for m in metrics},
                             "now": {m: now["scores"][m] for m in metrics},
                             "combined_now": now["info"]["strength_selection"].get("combined")})
            mean = {m: statistics.fmean(n["scores"][m] - b["scores"][m] for _, b, n in pairs) for m in metrics}
            lines += [f"| mean change | | " + " | ".join(f"{mean[m]:+.2f}" for m in metrics) + " |", ""]
    intro = ("# Strength chosen on renamed held-out inputs: the scoreboard's plugin cells before and after\n\n"
             f"Cells of `{args.config}` at `{args.before}` (strength chosen on held-out inputs as they are) and now "
             "(`select_renamed: 0.5`, the default recipe since: half the held-out inputs get pseudo-names for their "
             "copied names). The same trained weights; SER lower is better.")
    save("strength-renamed", rows, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

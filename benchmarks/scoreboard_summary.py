"""Where the default plugin stands on the scoreboard (issue "make the plugin win"), per task:
against each black-box-only alternative and the paper's mixture, seed by seed (a seed's plugin
against the same seed's demonstrations; zero-shot has no seed), and its gap to the LoRA-fine-tuned
black box as a percentage of LoRA's score. Reads the finished cells of a bench config (cells made
with other settings than the config's now are left out) and writes
benchmarks/results/scoreboard-summary.{json,md} (after the config's file name: one summary per config).

    python benchmarks/scoreboard_summary.py benchmarks/scoreboard.yaml
    python benchmarks/scoreboard_summary.py benchmarks/e2e-gemma3.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import LOWER_IS_BETTER, METRICS, beats, cell_sizes, finished_cells, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label  # noqa: E402


def finished(cfg, task: str, bb: str, method) -> dict[int | None, dict[str, float]]:
    """Scores per seed of the cells made with the config's current settings."""
    return {s: cell["scores"] for s, cell in finished_cells(cfg, task, bb, method).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--plugin", default="plugin", help="the method the others are measured against")
    ap.add_argument("--against", default="zero-shot,icl-1,icl-3,recipe-prompt,mixture-0.25,mixture-0.5,mixture-0.75,small,proxy-tuning",
                    help="comma-separated methods (those absent from the config are left out)")
    ap.add_argument("--ceiling", default="lora")
    args = ap.parse_args()
    cfg = load_config(args.config)
    by_name = {m.name: m for m in cfg.methods}
    data, lines = [], []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            plugin_cells = finished_cells(cfg, task, bb, by_name[args.plugin])
            if not plugin_cells:
                continue
            plugin = {s: cell["scores"] for s, cell in plugin_cells.items()}
            metrics = [m for m in METRICS if m in next(iter(plugin.values()))]
            n_train, n_test = cell_sizes(cfg, next(iter(plugin_cells.values())))
            lines += [f"## {task} · {bb}", "",
                      f"`{args.plugin}` on seeds {sorted(plugin)}; {n_train} training rows, {n_test} test inputs.", "",
                      "| against | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
            mean_plugin = {m: statistics.fmean(s[m] for s in plugin.values()) for m in metrics}
            lines.append(f"| ({args.plugin} itself) | {len(plugin)} | "
                         + " | ".join(f"{mean_plugin[m]:.2f}" for m in metrics) + " |")
            row = {"task": task, "blackbox": bb, "plugin_seeds": sorted(plugin), "plugin_mean": mean_plugin,
                   "against": {}, "ceiling": None}
            for name in [a for a in args.against.split(",") if a in by_name]:
                other = finished(cfg, task, bb, by_name[name])
                pairs = [(plugin[s], other[None if None in other else s]) for s in plugin if None in other or s in other]
                if not pairs:
                    continue
                cells, entry = [], {}
                for m in metrics:
                    diffs = [p[m] - o[m] for p, o in pairs]
                    wins = sum(beats(m, p[m], o[m]) for p, o in pairs)
                    entry[m] = {"wins": wins, "compared": len(pairs), "mean_difference": statistics.fmean(diffs)}
                    cells.append(f"{wins}/{len(pairs)} ({statistics.fmean(diffs):+.2f})")
                row["against"][name] = entry
                lines.append(f"| {name} | {len(pairs)} | " + " | ".join(cells) + " |")
            lora = finished(cfg, task, bb, by_name[args.ceiling]) if args.ceiling in by_name else {}
            if lora:
                mean_lora = {m: statistics.fmean(s[m] for s in lora.values()) for m in metrics}
                # how far below the ceiling, as % of the ceiling's score; an error rate (SER) in points
                gap = {m: mean_plugin[m] - mean_lora[m] if m in LOWER_IS_BETTER
                       else 100 * (mean_lora[m] - mean_plugin[m]) / mean_lora[m] for m in metrics if mean_lora[m]}
                row["ceiling"] = {"name": args.ceiling, "seeds": sorted(lora), "mean": mean_lora,
                                  "gap_percent": {m: g for m, g in gap.items() if m not in LOWER_IS_BETTER},
                                  "gap_points": {m: g for m, g in gap.items() if m in LOWER_IS_BETTER}}
                lines.append(f"| {args.ceiling} (ceiling; seeds {sorted(lora)}) | {len(lora)} | "
                             + " | ".join(f"{mean_lora[m]:.2f}" for m in metrics) + " |")
                lines.append(f"| gap to {args.ceiling} (% of its score; SER in points) | | "
                             + " | ".join("" if m not in gap else f"{gap[m]:+.1f} points" if m in LOWER_IS_BETTER
                                          else f"{gap[m]:+.1f}%" for m in metrics) + " |")
            lines.append("")
            data.append(row)
    intro = ("# Scoreboard summary: the default plugin against every alternative, seed by seed\n\n"
             f"From the finished cells of `{args.config}`; each task states the training rows and test inputs "
             "its cells ran with. Gap to the ceiling: "
             "(ceiling − plugin) / ceiling for scores, plugin − ceiling in points for SER; negative means "
             "the plugin is ahead. A cell against an alternative reads `wins/compared` (seeds where the plugin "
             "is better; for SER lower is better) and, in brackets, the mean difference plugin − alternative "
             "over the compared seeds; the plugin's own row and the ceiling's are means over their seeds.")
    save(f"{args.config.stem}-summary", data, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

"""Where every method of issue 4 stands, per task and black box, in one compact table each: the
mean ± standard deviation over finished seeds of the four text metrics (and E2E's slot error rate),
the seeds behind each row and the wall-clock per cell. Reads the finished cells of one or more
bench configs (cells made with settings other than a config's now are left out; a method a config
lacks or has not run is left out) and writes benchmarks/results/standing.{json,md}; with --into, also
replaces the tables between the standing markers of a Markdown file (BENCHMARKS.md's head), so the
scoreboard there is never pasted by hand.

    python benchmarks/standing.py benchmarks/scoreboard.yaml benchmarks/e2e-gemma3.yaml --into BENCHMARKS.md
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

# issue 4's methods in reading order: black-box-only, the small model, the paper's mixtures,
# proxy-tuning, the plugin (default recipe, then the paper's), the white-box ceiling
METHODS = ("zero-shot,icl-1,icl-3,small,mixture-0.25,mixture-0.5,mixture-0.75,proxy-tuning,plugin,plugin-paper,plugin-paper-bbw0.5,plugin-paper-bbw0.25,lora")
BLACK_BOX_ONLY = {"zero-shot", "icl-1", "icl-3"}
BEGIN, END = "<!-- standing: written by benchmarks/standing.py --into; do not edit by hand -->", "<!-- standing end -->"
REUSED_BELOW_S = 30.0  # recorded training seconds below which a cell's model came from an earlier run


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", type=Path, nargs="+")
    ap.add_argument("--methods", default=METHODS, help="comma-separated method names, in table order")
    ap.add_argument("--plugin", default="plugin", help="the row marked as the product's default")
    ap.add_argument("--into", type=Path, help="a Markdown file whose standing markers get the tables (one heading level down)")
    args = ap.parse_args()
    if args.into:  # before any work: a file without the markers would only be found out at the end
        _between_markers(args.into.read_text(encoding="utf-8"), args.into)
    wanted = args.methods.split(",")
    data, lines = [], []
    for path in args.configs:
        cfg = load_config(path)
        by_name = {m.name: m for m in cfg.methods}
        for task in cfg.tasks:
            for bb in map(blackbox_label, cfg.blackboxes):
                rows = {}
                for name in (n for n in wanted if n in by_name):
                    cells = finished_cells(cfg, task, bb, by_name[name])
                    if cells:
                        rows[name] = cells
                if not rows or (args.plugin not in rows and not any(n in rows for n in BLACK_BOX_ONLY)):
                    continue
                # a task keeps its table while its plugin cells are being rerun under a new default
                first = rows.get(args.plugin) or next(iter(rows.values()))
                metrics = [m for m in METRICS if m in next(iter(first.values()))["scores"]]
                summary = {name: {"seeds": sorted(s for s in cells if s is not None),
                                  "scores": {m: _mean_sd([c["scores"][m] for c in cells.values()]) for m in metrics},
                                  "wall_seconds": statistics.fmean(c.get("wall_seconds", 0.0) for c in cells.values()),
                                  # a cell that found its model trained by an earlier run records ~0 s of training
                                  "reused_model": any((c.get("info") or {}).get("seconds", {}).get("train", 1e9) < REUSED_BELOW_S
                                                      for c in cells.values())}
                           for name, cells in rows.items()}
                # the best of each metric among everything but the white-box ceiling, in bold
                rivals = [n for n in summary if n != "lora"]
                best = {m: (min if m in LOWER_IS_BETTER else max)(summary[n]["scores"][m][0] for n in rivals)
                        for m in metrics}
                n_train, n_test = cell_sizes(cfg, next(iter(first.values())))
                lines += [f"## {task} · {bb}", "",
                          f"`{path}`: {n_train} training rows, {n_test} test inputs; mean ± standard deviation over "
                          "the seeds listed; best of each metric short of the LoRA ceiling in bold" + (" (SER: lower is better)" if "SER" in metrics
                                                                              else "") + ".", "",
                          "| method | seeds | " + " | ".join(metrics) + " | wall s/cell |",
                          "|---|---|" + "---|" * (len(metrics) + 1)]
                for name, row in summary.items():
                    shown = []
                    for m in metrics:
                        mean, sd = row["scores"][m]
                        text = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
                        shown.append(f"**{text}**" if name != "lora" and round(mean, 2) == round(best[m], 2) else text)
                    label = {args.plugin: f"{name} (default recipe)", "lora": "lora (white-box ceiling)"}.get(name, name)
                    seeds = ",".join(map(str, row["seeds"])) or "—"
                    wall = f"{row['wall_seconds']:,.0f}" + (" †" if row["reused_model"] else "")
                    lines.append(f"| {label} | {seeds} | " + " | ".join(shown) + f" | {wall} |")
                if args.plugin not in summary:
                    lines += ["", f"`{args.plugin}`: no cell made with the current default recipe yet (rerun pending)"]
                if any(r["reused_model"] for r in summary.values()):
                    lines += ["", "† a cell reused a model an earlier run had trained with the same settings: its time "
                              "is the prompt and test decoding only, not training"]
                lines.append("")
                data.append({"config": str(path), "task": task, "blackbox": bb, "metrics": metrics,
                             "methods": {n: {"seeds": r["seeds"], "wall_seconds": r["wall_seconds"],
                                             "reused_model": r["reused_model"],
                                             "mean": {m: v[0] for m, v in r["scores"].items()},
                                             "sd": {m: v[1] for m, v in r["scores"].items()}}
                                         for n, r in summary.items()},
                             "best_short_of_ceiling": best,
                             "plugin_leads_black_box_only": {
                                 m: all(beats(m, summary[args.plugin]["scores"][m][0], summary[n]["scores"][m][0])
                                        for n in summary if n in BLACK_BOX_ONLY) for m in metrics}
                             if args.plugin in summary else None})
    intro = ("# Where every method stands\n\n"
             "Issue 4's methods on every task, from the finished cells of the configs below (each cell: same "
             "training rows, validation-only choices, same test inputs and decoding). `—` in the seeds "
             "column: an unseeded method (zero-shot). Per-seed comparisons of the plugin: "
             "`benchmarks/results/CONFIG-summary.md` (one per config, e.g. `scoreboard-summary.md`).")
    save("standing", data, intro, "\n".join(lines))
    if args.into:
        text = args.into.read_text(encoding="utf-8")
        head, tail = _between_markers(text, args.into)
        tables = "\n".join("#" + line if line.startswith("## ") else line for line in lines).strip()
        cells = " and ".join(f"`logitplug bench {config}`" for config in args.configs)
        args.into.write_text(f"{head}{BEGIN}\n\nCells: {cells} (resumable: finished cells are skipped; "
                             f"`--tasks`, `--methods`, `--seeds` run a part). Tables: `python benchmarks/standing.py "
                             f"{' '.join(map(str, args.configs))} --into {args.into}`\n\n{tables}\n\n{END}{tail}",
                             encoding="utf-8")
        print(f"tables written into {args.into}")


def _between_markers(text: str, path: Path) -> tuple[str, str]:
    """The text before the begin marker and from after the end marker on."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path} has no standing markers: put the lines\n{BEGIN}\n{END}\nwhere the tables go")
    return text[:start], text[end + len(END):]


if __name__ == "__main__":
    main()

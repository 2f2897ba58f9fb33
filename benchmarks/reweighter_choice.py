"""Choosing the reweighter on validation: would "train each candidate, keep the one whose held-out
text scores best" beat the default on the scoreboard? Needs no new training or decoding: every
plugin cell's folder keeps the held-out scores behind its strength choice (the same held-out
inputs for every candidate of a task and seed), so this reads them, picks per task and seed, and
reports the chosen candidate's test scores beside the default's.

The pick is the library's (logitplug.selection.choose_plugin, what `train --try-token-vectors`
does): each candidate's held-out metrics at the strength it decodes with, each divided by the best
candidate's, averaged; the first candidate (the default) is kept unless another beats its mix by
more than --margin on that mix (0.02, as the strength choice).

    python benchmarks/reweighter_choice.py benchmarks/scoreboard.yaml --candidates plugin,plugin-vectors

Superseded since session 15: the default recipe now makes this choice itself, and each plugin cell
records it (``info.reweighter_choice``), so run on newer cells the ``plugin`` candidate already is the
choice. results/reweighter-choice.{md,json} keep the session-14 table, made from the cells before.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import METRICS, finished_cells, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label  # noqa: E402
from logitplug.selection import choose_plugin  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--candidates", default="plugin,plugin-vectors", help="comma-separated methods; the first is the default")
    ap.add_argument("--against", default="recipe-prompt,icl-3", help="comma-separated methods shown beside (test only)")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--out", default="reweighter-choice")
    args = ap.parse_args()
    cfg = load_config(args.config)
    by_name = {m.name: m for m in cfg.methods}
    names = args.candidates.split(",")
    data, lines = [], []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            cells = {n: finished_cells(cfg, task, bb, by_name[n]) for n in names}
            seeds = sorted(set.intersection(*(set(c) for c in cells.values())) - {None})
            if not seeds:
                continue
            metrics = [m for m in METRICS if m in cells[names[0]][seeds[0]]["scores"]]
            others = {n: finished_cells(cfg, task, bb, by_name[n]) for n in args.against.split(",") if n in by_name}
            lines += [f"## {task} · {bb}", "",
                      "| seed | held-out mix per candidate | chosen | test: chosen | test: " + names[0] + " |",
                      "|---|---|---|---|---|"]
            chosen_scores, default_scores = [], []
            for seed in seeds:
                index, mixes = choose_plugin([cells[n][seed]["info"]["artifact"] for n in names], args.margin)
                pick, mix = names[index], dict(zip(names, mixes))
                test = {n: cells[n][seed]["scores"] for n in names}
                chosen_scores.append(test[pick])
                default_scores.append(test[names[0]])
                fmt = lambda s: " / ".join(f"{s[m]:.2f}" for m in metrics)  # noqa: E731
                lines.append(f"| {seed} | " + ", ".join(f"{n} {mix[n]:.3f}" for n in names) + f" | {pick} | "
                             f"{fmt(test[pick])} | {fmt(test[names[0]])} |")
                data.append({"task": task, "blackbox": bb, "seed": seed, "held_out_mix": mix, "chosen": pick,
                             "test": test})
            mean = lambda rows: {m: statistics.fmean(r[m] for r in rows) for m in metrics}  # noqa: E731
            lines += ["", "| means over seeds " + str(seeds) + " | " + " | ".join(metrics) + " |",
                      "|---|" + "---|" * len(metrics)]
            rows = {"chosen on validation": mean(chosen_scores), names[0]: mean(default_scores)}
            for n, c in others.items():
                got = [c[None if None in c else s]["scores"] for s in seeds if None in c or s in c]
                if len(got) == len(seeds):
                    rows[n] = mean(got)
            for n, r in rows.items():
                lines.append(f"| {n} | " + " | ".join(f"{r[m]:.2f}" for m in metrics) + " |")
            lines.append("")
    intro = ("# Choosing the reweighter on validation\n\n"
             f"Candidates {names} (the first is the default), per task and seed of `{args.config}`: the one "
             "whose held-out text (at the strength it chose) scores best on the mean of BLEU, METEOR, ROUGE-L "
             f"and CIDEr relative to the best candidate, the default unless beaten by more than {args.margin:g} of that mix. "
             "Test scores as BLEU / METEOR / ROUGE-L / CIDEr (/ SER).")
    save(args.out, data, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

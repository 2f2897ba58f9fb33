"""Turn finished bench cells into one JSON summary, one Markdown table and PNG plots."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import BenchConfig

LOWER_IS_BETTER = {"SER", "empty"}


def collect(cfg: "BenchConfig") -> list[dict[str, Any]]:
    """Mean, standard deviation and count per (task, black box, method), in config order."""
    cells: dict[tuple[str, str, str, int | None], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted((cfg.output_dir / "cells").rglob("*.json")):
        rec = json.loads(path.read_text())
        cells[(rec["task"], rec["blackbox"], rec["method"], rec.get("sweep_size"))].append(rec)
    from .runner import blackbox_label, settings_key

    sizes = sorted({k[3] for k in cells if k[3] is not None}) + [None]
    rows = []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            for method, size in [(m, n) for m in cfg.methods for n in sizes]:
                recs = cells.get((task, bb, method.name, size))
                if not recs:
                    continue
                metrics = list(recs[0]["scores"])
                summary = {}
                for m in metrics:
                    values = [r["scores"][m] for r in recs]
                    summary[m] = {"mean": statistics.fmean(values),
                                  "std": statistics.stdev(values) if len(values) > 1 else 0.0}
                key = settings_key(cfg, method, task)
                rows.append({
                    "task": task, "blackbox": bb, "method": method.name, "runs": len(recs),
                    # cells made with other settings than the config's now (a rerun would redo them)
                    "stale": sum(r.get("settings_key") != key for r in recs),
                    "seeds": [r["seed"] for r in recs], "test_inputs": recs[0]["test_inputs"],
                    "train_rows": recs[0]["train_rows"], "sweep_size": size, "scores": summary,
                    "per_seed": {str(r["seed"]): r["scores"] for r in recs},
                    "wall_seconds": statistics.fmean(r["wall_seconds"] for r in recs),
                })
    return rows


def _fmt(s: dict[str, float], runs: int) -> str:
    return f"{s['mean']:.2f}" if runs < 2 else f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(cfg: "BenchConfig", rows: list[dict[str, Any]]) -> str:
    lines = [f"# bench: {cfg.name}", ""]
    if cfg.config_path:
        lines += [f"Command: `logitplug bench {cfg.config_path}` (rerun to resume; `--report-only` rebuilds this table).", ""]
    for task in cfg.tasks:
        for bb in sorted({r["blackbox"] for r in rows if r["task"] == task}):
            sub = [r for r in rows if r["task"] == task and r["blackbox"] == bb]
            if not sub:
                continue
            metrics = [m for m in sub[0]["scores"]]
            sweep = any(r["sweep_size"] is not None for r in sub)
            rows_said = ("training rows as listed (— : a method that does not train; its demonstrations, if any, "
                         "come from the smallest size's rows)" if sweep else f"{sub[0]['train_rows']} training rows")
            lines += [f"## {task} · {bb}", "",
                      f"{rows_said}, {sub[0]['test_inputs']} test inputs; "
                      "mean ± standard deviation over seeds (runs column); best per column in bold "
                      "(SER and empty: lower is better).", ""]
            best = {}
            for m in metrics:
                vals = [r["scores"][m]["mean"] for r in sub if m in r["scores"]]
                best[m] = min(vals) if m in LOWER_IS_BETTER else max(vals)
            lines.append("| method | " + ("train rows | " if sweep else "") + "runs | " + " | ".join(metrics) + " | wall s/cell |")
            lines.append("|---|" + ("---|" if sweep else "") + "---|" + "---|" * len(metrics) + "---|")
            for r in sub:
                cells = []
                for m in metrics:
                    text = _fmt(r["scores"][m], r["runs"]) if m in r["scores"] else "-"
                    cells.append(f"**{text}**" if m in r["scores"] and r["scores"][m]["mean"] == best[m] else text)
                size = (f"{r['train_rows']} | " if r["sweep_size"] is not None else "— | ") if sweep else ""
                name = r["method"] + (f" (stale: {r['stale']} of {r['runs']} made with other settings)" if r["stale"] else "")
                lines.append(f"| {name} | {size}{r['runs']} | " + " | ".join(cells) + f" | {r['wall_seconds']:.0f} |")
            lines.append("")
            if any(r["stale"] for r in sub):
                lines += ["Stale rows were made with settings other than the config's now (e.g. an older recipe); "
                          "a rerun redoes them.", ""]
    return "\n".join(lines)


def plot(cfg: "BenchConfig", rows: list[dict[str, Any]]) -> list[Path]:
    """One PNG per task and black box: each metric's mean per method, with the spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task in cfg.tasks:
        for bb in sorted({r["blackbox"] for r in rows if r["task"] == task}):
            sub = [r for r in rows if r["task"] == task and r["blackbox"] == bb]
            if not sub:
                continue
            metrics = [m for m in sub[0]["scores"] if m != "empty"]
            if any(r["sweep_size"] is not None for r in sub):
                paths.append(_curves(cfg, task, bb, sub, metrics, plt))
                continue
            fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.6), squeeze=False)
            names = [r["method"] for r in sub]
            for ax, m in zip(axes[0], metrics):
                means = [r["scores"][m]["mean"] for r in sub]
                stds = [r["scores"][m]["std"] for r in sub]
                ax.bar(range(len(sub)), means, yerr=stds, color="tab:blue", capsize=3)
                ax.set_xticks(range(len(sub)), names, rotation=60, ha="right", fontsize=8)
                ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
            fig.suptitle(f"{task} · {bb}", fontsize=10)
            fig.tight_layout()
            path = cfg.output_dir / f"plot-{task}-{bb}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def _curves(cfg: "BenchConfig", task: str, bb: str, sub: list[dict[str, Any]], metrics: list[str], plt) -> Path:
    """Metric vs number of training rows, one line per method; methods without training data as
    horizontal lines."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.6), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in sub))
    drew_hollow = False
    flat_styles = [("--", "gray"), (":", "black"), ("-.", "tab:purple"), ((0, (5, 1)), "tab:brown")]
    for ax, m in zip(axes[0], metrics):
        flat_seen = 0
        for name in methods:
            pts = sorted((r["train_rows"], r["scores"][m]["mean"], r["scores"][m]["std"], bool(r["stale"]))
                         for r in sub if r["method"] == name and r["sweep_size"] is not None)
            flat = [r for r in sub if r["method"] == name and r["sweep_size"] is None]
            if pts:
                line = ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                                   capsize=3, label=name)
                old = [p for p in pts if p[3]]
                if old:  # a point made with other settings than the config's now: hollow, as the table flags it
                    ax.plot([p[0] for p in old], [p[1] for p in old], "o", markerfacecolor="white",
                            color=line[0].get_color(), zorder=3)  # errorbar draws its line at 2.1
                    drew_hollow = True
            elif flat:
                style, color = flat_styles[flat_seen % len(flat_styles)]
                flat_seen += 1
                ax.axhline(flat[0]["scores"][m]["mean"], linestyle=style, color=color, label=name)
        ax.set_xscale("log")
        sizes = sorted({r["train_rows"] for r in sub if r["sweep_size"] is not None})
        if sizes:  # the sizes themselves as ticks: log-scale minor labels (3x10^2, 4x10^2) overlap
            ax.set_xticks(sizes, [str(n) for n in sizes], fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel("training rows", fontsize=8)
        ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
    axes[0][0].legend(fontsize=7)
    stale = " (hollow: made with other settings than the config's now)" if drew_hollow else ""
    fig.suptitle(f"{task} · {bb}: metric vs training-set size{stale}", fontsize=10)
    fig.tight_layout()
    path = cfg.output_dir / f"curve-{task}-{bb}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(cfg: "BenchConfig") -> Path:
    rows = collect(cfg)
    (cfg.output_dir / "results.json").write_text(json.dumps(rows, indent=2))
    table = cfg.output_dir / "results.md"
    table.write_text(markdown(cfg, rows))
    plot(cfg, rows)
    return table

"""Is the plugin's lead real? Paired bootstrap over the test inputs of a bench config: for the
plugin against each alternative, resample the 300 test inputs (the same inputs for both methods
and every seed: the bench cuts one test set for all seeds) and recompute each metric's difference,
corpus-level where the metric is (BLEU from summed n-gram statistics, SER from summed slot
counts; METEOR, ROUGE-L and CIDEr as means of their per-input scores, CIDEr's document
frequencies fixed by the full reference set). Reports the mean-over-seeds difference, its 95%
interval and the share of resamples where the plugin is ahead. Writes
benchmarks/results/paired-bootstrap.{json,md}.

    python benchmarks/paired_bootstrap.py benchmarks/scoreboard.yaml --against icl-3,recipe-prompt
    python benchmarks/paired_bootstrap.py benchmarks/scoreboard.yaml --tasks adidas --against mixture-0.5 --out NAME
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import LOWER_IS_BETTER, METRICS, finished_cells, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label, prepare_task  # noqa: E402
from logitplug.eval import cider, e2e_slot_errors, meteor, rouge_l  # noqa: E402


def per_input(task: str, outputs: list[str], data) -> dict[str, np.ndarray]:
    """Per test input, what each metric sums or averages over the corpus."""
    from sacrebleu.metrics import BLEU

    refs = [list(ex.references) for ex in data.test]
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    bleu = BLEU(lowercase=True, smooth_method="none")  # as logitplug.eval.bleu
    # sacrebleu's own paired test works from these per-sentence statistics too
    out = {"BLEU": np.array(bleu._extract_corpus_statistics(outputs, streams), dtype=float)}
    for name, fn in (("METEOR", meteor), ("ROUGE-L", rouge_l), ("CIDEr", cider)):
        scale = 1.0 if name == "CIDEr" else 100.0  # METEOR's and ROUGE-L's per-input scores are fractions
        out[name] = scale * np.array(fn(outputs, refs).per_item, dtype=float)
    if task.startswith("e2e"):
        errs = [e2e_slot_errors(ex.input, o, data.venue_names) for ex, o in zip(data.test, outputs)]
        out["SER"] = np.array([[len(e.missing) + len(e.hallucinated), e.total_slots] for e in errs], dtype=float)
    return out


def corpus(metric: str, stats: np.ndarray) -> np.ndarray:
    """The corpus score of each resample; ``stats`` is (resamples, inputs, ...)."""
    if metric == "BLEU":
        from sacrebleu.metrics import BLEU

        bleu = BLEU(lowercase=True, smooth_method="none")
        return np.array([bleu._compute_score_from_stats(list(s)).score for s in stats.sum(1)])
    if metric == "SER":
        summed = stats.sum(1)
        return 100.0 * summed[:, 0] / np.maximum(summed[:, 1], 1)
    return stats.mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--plugin", default="plugin")
    ap.add_argument("--against", default="icl-3,recipe-prompt")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the config's)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="paired-bootstrap",
                    help="results name under benchmarks/results/ (a slice's own name keeps the full table)")
    args = ap.parse_args()
    cfg = load_config(args.config)
    by_name = {m.name: m for m in cfg.methods}
    tasks = args.tasks.split(",") if args.tasks else cfg.tasks
    data_out, lines = [], []
    for task in tasks:
        data = prepare_task(cfg, task)
        rng = np.random.default_rng(args.seed)
        picks = rng.integers(0, len(data.test), size=(args.resamples, len(data.test)))
        for bb in map(blackbox_label, cfg.blackboxes):
            def outputs_of(name: str) -> dict:
                found = {}
                for seed, cell in finished_cells(cfg, task, bb, by_name[name]).items():
                    gens = cell["generations"]
                    if [g["input"] for g in gens] != [ex.input for ex in data.test]:
                        sys.exit(f"{task}/{name}/seed {seed}: its outputs are not for this config's test inputs")
                    found[seed] = [g["output"] for g in gens]
                return found

            def scored(outputs: list[str]) -> dict[str, tuple[float, np.ndarray]]:
                """Per metric: the corpus score on the test set as it is, and on each resample."""
                stats = per_input(task, outputs, data)
                return {m: (float(corpus(m, stats[m][None])[0]), corpus(m, stats[m][picks])) for m in stats}

            plugin = {s: scored(o) for s, o in outputs_of(args.plugin).items()}
            if not plugin:
                continue
            metrics = [m for m in METRICS if m in next(iter(plugin.values()))]
            lines += [f"## {task} · {bb}", "", f"`{args.plugin}` − alternative on the {len(data.test)} test inputs, "
                      f"mean over the seeds both have; [95% interval]; share of {args.resamples} resamples where "
                      f"`{args.plugin}` is better (SER: lower).", "",
                      "| against | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
            for name in [a for a in args.against.split(",") if a in by_name]:
                # an unseeded alternative (zero-shot) is scored once and compared with every seed
                other = {k: scored(o) for k, o in outputs_of(name).items() if k is None or k in plugin}
                seeds = [s for s in plugin if s in other or None in other]
                if not seeds:
                    continue
                pairs = [(plugin[s], other[None if None in other else s]) for s in seeds]
                row, cells = {}, []
                for m in metrics:
                    diff = np.mean([p[m][1] - o[m][1] for p, o in pairs], 0)
                    seen = float(np.mean([p[m][0] - o[m][0] for p, o in pairs]))
                    low, high = np.percentile(diff, [2.5, 97.5])
                    ahead = float(np.mean(diff < 0 if m in LOWER_IS_BETTER else diff > 0))
                    row[m] = {"difference": seen, "interval": [float(low), float(high)], "share_ahead": ahead}
                    cells.append(f"{seen:+.2f} [{low:+.2f}, {high:+.2f}] {ahead:.0%}")
                data_out.append({"task": task, "blackbox": bb, "against": name, "seeds": seeds, "metrics": row})
                lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
            lines.append("")
    intro = ("# Paired bootstrap: is the plugin's lead larger than the test set's noise?\n\n"
             f"From the finished cells of `{args.config}`. A lead whose interval excludes 0 (share near 100%) "
             "holds on resampled test inputs; seeds are averaged inside each resample, so the interval is for "
             "the mean over seeds the scoreboard reports. It does not cover retraining noise (that is what the "
             "seeds show).")
    save(args.out, data_out, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

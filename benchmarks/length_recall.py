"""Output length, unigram precision and recall of finished bench cells, against their references.

METEOR weights recall nine times as much as precision, so a longer output that repeats every input
value (and adds more) can lead METEOR while trailing BLEU, ROUGE-L and CIDEr. This reads cells'
stored test generations and measures, per output against its best-matching reference: words,
unigram precision, unigram recall, METEOR's recall-weighted mean (alpha 0.9, no fragmentation
penalty or stems/synonyms: a proxy, not METEOR) and the balanced F1.

    python benchmarks/length_recall.py benchmarks/e2e-gemma3.yaml --name length-recall-gemma \
        benchmarks/runs/e2e-gemma3/cells/e2e/gemma3-270m/{icl-3,plugin}/seed*.json

Writes benchmarks/results/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import yaml

from _results import save
from logitplug.bench.runner import parse_config, prepare_task

WORD = re.compile(r"\w+")


def unigram_match(output: str, references: tuple[str, ...]) -> tuple[float, float, float, float]:
    """(recall-weighted mean, precision, recall, F1) of ``output`` against its best reference by the first."""
    out = Counter(WORD.findall(output.lower()))
    best = (0.0, 0.0, 0.0, 0.0)
    for ref in references:
        ref_counts = Counter(WORD.findall(ref.lower()))
        matched = sum((out & ref_counts).values())
        if not matched:
            continue
        p, r = matched / sum(out.values()), matched / sum(ref_counts.values())
        best = max(best, (p * r / (0.9 * p + 0.1 * r), p, r, 2 * p * r / (p + r)))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="the bench config the cells came from (for the test references)")
    ap.add_argument("cells", type=Path, nargs="+", help="cell JSON files of one task")
    ap.add_argument("--name", default="length-recall", help="results name under benchmarks/results/")
    args = ap.parse_args()
    cfg = parse_config(yaml.safe_load(args.config.read_text()))
    cells = [json.loads(p.read_text()) for p in args.cells]
    tasks = {c["task"] for c in cells}
    if len(tasks) != 1:
        raise SystemExit(f"cells of one task, please; got {sorted(tasks)}")
    rows = cfg.data.get("train_rows")
    data = prepare_task(cfg, tasks.pop(), rows if isinstance(rows, int) else None)
    references = {e.input: e.references for e in data.test}
    ref_words = statistics.mean(statistics.mean(len(r.split()) for r in refs) for refs in references.values())
    results = []
    for path, cell in zip(args.cells, cells):
        gens = cell["generations"]
        missing = [g["input"] for g in gens if g["input"] not in references]
        if missing:
            raise SystemExit(f"{path}: {len(missing)} inputs are not in the config's test split (another config?)")
        scores = [unigram_match(g["output"], references[g["input"]]) for g in gens]
        results.append({
            "cell": str(path), "blackbox": cell["blackbox"], "method": cell["method"], "seed": cell.get("seed"),
            "words": statistics.mean(len(g["output"].split()) for g in gens),
            "recall_weighted": 100 * statistics.mean(s[0] for s in scores),
            "precision": 100 * statistics.mean(s[1] for s in scores),
            "recall": 100 * statistics.mean(s[2] for s in scores),
            "f1": 100 * statistics.mean(s[3] for s in scores),
            "METEOR": cell["scores"].get("METEOR"), "BLEU": cell["scores"].get("BLEU"),
        })
    lines = ["| black box | method | seed | words | unigram precision | unigram recall | recall-weighted (0.9) | F1 | METEOR | BLEU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['blackbox']} | {r['method']} | {r['seed'] if r['seed'] is not None else '-'} | {r['words']:.1f} | "
                     f"{r['precision']:.1f} | {r['recall']:.1f} | {r['recall_weighted']:.1f} | {r['f1']:.1f} | "
                     f"{r['METEOR']:.2f} | {r['BLEU']:.2f} |")
    intro = (f"# Output length, unigram precision and recall ({len(data.test)} test inputs; references average "
             f"{ref_words:.1f} words)\n\nPer output against its best reference (by the recall-weighted mean); "
             "words split on spaces, unigrams `\\w+` lowercased. The recall-weighted mean is METEOR's Fmean "
             "without its fragmentation penalty, stems or synonyms: a proxy that shows the direction METEOR leans.")
    save(args.name, {"reference_words": ref_words, "cells": results}, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

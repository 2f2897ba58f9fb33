"""Probe: which reweighting strength does each selection criterion choose, on validation only?

For finished bench plugin cells this decodes the validation inputs (the same ones selection sees)
with the cell's kept weights at each strength and scores the outputs with every metric of the
mix. It prints what held-out loss chose (stored in the cell), what BLEU alone would choose and
what the mix would choose (``train._shares_of_best``: the mean of each metric's share of its best
score). Nothing here reads test data. Results in benchmarks/results/strength-choice.{json,md}.

    python benchmarks/strength_choice.py benchmarks/scoreboard.yaml CELL.json [CELL.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import save  # benchmarks/_results.py

from logitplug.bench import load_config
from logitplug.bench.runner import prepare_task
from logitplug.blackbox import load_blackbox
from logitplug.data.core import PromptTemplate
from logitplug.decode import GenerationConfig
from logitplug.eval import metric_names
from logitplug.reweighter import Reweighter, read_sidecar
from logitplug.selection import text_metrics_scorer
from logitplug.train import at_strength, _shares_of_best, trained_rule


def probe(cfg, cell_path: str, alphas: list[float], metrics: tuple[str, ...]) -> dict:
    cell = json.loads(Path(cell_path).read_text())
    artifact = Path(cell["info"]["artifact"])
    if not artifact.exists():  # a run folder renamed since (runs/strength became runs/scoreboard)
        artifact = Path(cfg.output_dir) / artifact.relative_to(*artifact.parts[:artifact.parts.index("models")])
    sidecar = read_sidecar(artifact)
    by_loss = float((sidecar.get("strength_selection") or {}).get("by_loss", sidecar["train_config"]["alpha"]))
    bb = load_blackbox(cell["blackbox_path"])
    template = PromptTemplate(**sidecar["template"])
    validation = prepare_task(cfg, cell["task"]).validation
    rule = trained_rule(artifact, bb.tokenizer.eos_token_id)
    generation = GenerationConfig(**cfg.generation_for(cell["task"]))
    score = text_metrics_scorer(bb, template, validation, metrics, rule, generation, 100)
    model = Reweighter.from_pretrained(artifact, bb.fingerprint).eval()
    scores = {}
    for a in alphas:
        scores[a] = score(model, at_strength(rule, a))
        print(cell["task"], a, {m: round(v, 3) for m, v in scores[a].items()}, flush=True)
    combined = _shares_of_best(scores)
    return {"cell": cell_path, "task": cell["task"], "method": cell["method"], "by_loss": by_loss,
            "by_bleu": max(alphas, key=lambda a: scores[a]["BLEU"]), "by_mix": max(alphas, key=lambda a: combined[a]),
            "rows": [{"alpha": a, **scores[a], "mix": combined[a]} for a in alphas]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--alphas", default="0.25,0.5,0.75,1,1.25,1.5")
    ap.add_argument("--mix", default="BLEU+METEOR+ROUGE-L+CIDEr")
    args = ap.parse_args()
    cfg = load_config(args.config)
    alphas = [float(a) for a in args.alphas.split(",")]
    metrics = metric_names(args.mix)
    results = [probe(cfg, c, alphas, metrics) for c in args.cells]
    lines = []
    for r in results:
        lines += [f"**{r['task']}** ({r['method']}): held-out loss chose {r['by_loss']:g}, BLEU alone {r['by_bleu']:g}, "
                  f"the mix {r['by_mix']:g}", "",
                  "| strength | " + " | ".join(metrics) + " | mix |", "|---|" + "---|" * (len(metrics) + 1)]
        for row in r["rows"]:
            lines.append(f"| {row['alpha']:g} | " + " | ".join(f"{row[m]:.2f}" for m in metrics) + f" | {row['mix']:.4f} |")
        lines.append("")
    save("strength-choice", results, "Validation (100 inputs) greedy text of each plugin's kept weights by reweighting "
         f"strength; mix = mean share of each metric's best ({args.mix}).", "\n".join(lines))


if __name__ == "__main__":
    main()

"""Probe: which reweighting strength does greedy decoding want, and does held-out loss find it?

The default recipe picks the strength a of ``z_bb + a*z_r`` by held-out loss. Greedy decoding
takes the argmax, and loss can prefer a flatter rule than argmax does. For finished bench plugin
cells this replays the held-out rows from the run's log-prob cache (no black-box pass when they
are cached) and prints, at each strength, the held-out loss and the teacher-forced top-1 accuracy
(the fraction of target tokens the combined argmax gets right) of the kept weights. Validation
only; results in benchmarks/results/strength-probe.{json,md}.

    python benchmarks/strength_probe.py benchmarks/scoreboard.yaml CELL.json [CELL.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _results import save  # benchmarks/_results.py

from accelerate import Accelerator

from logitplug.bench import load_config
from logitplug.bench.runner import prepare_task
from logitplug.blackbox import load_blackbox
from logitplug.cache import LogProbCache
from logitplug.data import encode_all
from logitplug.data.core import PromptTemplate
from logitplug.reweighter import Reweighter, read_sidecar
from logitplug.train import _evaluate, _LogProbSource, trained_rule


def probe(cfg, cell_path: str, alphas: list[float]) -> dict:
    cell = json.loads(Path(cell_path).read_text())
    artifact = cell["info"]["artifact"]
    sidecar = read_sidecar(artifact)
    tc = sidecar["train_config"]
    bb = load_blackbox(cell["blackbox_path"])
    template = PromptTemplate(**sidecar["template"])
    validation = prepare_task(cfg, cell["task"]).validation
    enc = encode_all(bb.tokenizer, template, validation, min(tc["max_length"], bb.max_context))
    cache = LogProbCache(Path(artifact).parent / "logprob-cache", bb.fingerprint, bb.vocab_size, tc["cache_top_k"])
    source = _LogProbSource(bb, cache)
    source.record(enc, 8, 0, 1, False)
    model = Reweighter.from_pretrained(artifact, bb.fingerprint)
    rule = trained_rule(artifact, bb.tokenizer.eos_token_id)
    _, bb_loss, losses, accuracy = _evaluate(model, Accelerator(cpu=True), source, rule, enc, 8, "mle", alphas)
    rows = [{"alpha": a, "loss": l, "accuracy": acc} for a, l, acc in zip(alphas, losses, accuracy)]
    return {"cell": cell_path, "task": cell["task"], "method": cell["method"], "chosen_alpha": tc["alpha"],
            "best_epoch": sidecar.get("best_epoch"), "blackbox_loss": bb_loss, "test_scores": cell["scores"], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("cells", nargs="+")
    ap.add_argument("--alphas", default="0,0.25,0.5,0.75,1,1.25,1.5,2")
    args = ap.parse_args()
    cfg = load_config(args.config)
    alphas = [float(a) for a in args.alphas.split(",")]
    results = [probe(cfg, c, alphas) for c in args.cells]
    lines = ["| task | method | chosen a | " + " | ".join(f"a={a:g}" for a in alphas) + " |",
             "|---|---|---|" + "---|" * len(alphas)]
    for r in results:
        best_loss = min(r["rows"], key=lambda x: x["loss"])["alpha"]
        best_acc = max(r["rows"], key=lambda x: x["accuracy"])["alpha"]
        cells = []
        for x in r["rows"]:
            text = f"{x['loss']:.4f} / {100 * x['accuracy']:.2f}%"
            if x["alpha"] in (best_loss, best_acc):
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {r['task']} | {r['method']} | {r['chosen_alpha']:g} | " + " | ".join(cells) + " |")
    save("strength-probe", results, "Held-out loss per token / teacher-forced top-1 accuracy of each plugin's kept "
         "weights by strength (bold: the best of each).", "\n".join(lines))


if __name__ == "__main__":
    main()

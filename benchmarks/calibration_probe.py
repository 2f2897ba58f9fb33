"""Probe: does subtracting what a trained plugin adds *whatever the input* help under a shift?

A plugin trained on CommonGen's protocol (every training caption says "man") boosts " man" after
"A" for any concept set. Contextual calibration (Zhao et al. 2021) estimates such a prior from a
content-free input; here: the reweighting becomes ``z_r(x) - b * z_r(x0)`` where x0 is the same
prompt (template and demonstrations) with the input replaced by a content-free string, both fed
the same generated tokens. This script decodes *validation* inputs (never test) of one finished
bench cell under strengths a and b in {0, 1}; a method is only worth building if it wins here.

    python benchmarks/calibration_probe.py benchmarks/scoreboard.yaml CELL.json --inputs 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from logitplug.bench import load_config
from logitplug.bench.runner import prepare_task
from logitplug.blackbox import load_blackbox
from logitplug.data import encode_prompt, group_by_input
from logitplug.data.core import PromptTemplate
from logitplug.decode import Decoder, GenerationConfig
from logitplug.eval import evaluate
from logitplug.reweighter import Reweighter, read_sidecar
from logitplug.train import trained_rule


class _Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def reorder(self, index):
        self.a.reorder(index)
        self.b.reorder(index)


class Calibrated(torch.nn.Module):
    """``z_r(x) - b * z_r(x0)`` with x0 one fixed content-free prompt (dense decoding path)."""

    supports_sparse = False

    def __init__(self, base: Reweighter, null_prompt: list[int], b: float):
        super().__init__()
        self.base, self.null, self.b = base, torch.tensor(null_prompt)[None, :], b
        self.vocab_size, self.lm = base.vocab_size, base.lm

    def start(self, input_ids, attention_mask):
        z, s = self.base.start(input_ids, attention_mask)
        null = self.null.repeat(input_ids.shape[0], 1)
        z0, s0 = self.base.start(null, torch.ones_like(null))
        return z - self.b * z0, _Pair(s, s0)

    def step(self, state, tokens):
        return self.base.step(state.a, tokens) - self.b * self.base.step(state.b, tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("cell")
    ap.add_argument("--inputs", type=int, default=100)
    ap.add_argument("--null", default="N/A", help="the content-free input")
    ap.add_argument("--alphas", default="0.25,0.5,1")
    ap.add_argument("--calibrations", default="0,1", help="values of b to try")
    args = ap.parse_args()
    cfg = load_config(args.config)
    cell = json.loads(Path(args.cell).read_text())
    data = prepare_task(cfg, cell["task"])
    bb = load_blackbox(cell["blackbox_path"])
    artifact = cell["info"]["artifact"]
    template = PromptTemplate(**read_sidecar(artifact)["template"])
    rw = Reweighter.from_pretrained(artifact, bb.fingerprint)
    rule = trained_rule(artifact, bb.tokenizer.eos_token_id)
    gen = GenerationConfig(**cfg.generation_for(cell["task"]))
    inputs = [ex for ex in group_by_input(data.validation) if ex.references][: args.inputs]
    prompts = [encode_prompt(bb.tokenizer, template, ex.input) for ex in inputs]
    refs = [list(ex.references) for ex in inputs]
    null = encode_prompt(bb.tokenizer, template, args.null)
    rows = []
    for a in [float(x) for x in args.alphas.split(",")]:
        for b in [float(x) for x in args.calibrations.split(",")]:
            rule.alpha = a
            model = rw if b == 0 else Calibrated(rw, null, b)
            outs = [g.text for g in Decoder(bb, model, rule, gen).generate_ids(prompts)]
            scores = {m: s.score for m, s in evaluate(outs, refs, ["BLEU", "ROUGE-L", "CIDEr"]).items()}
            man = sum(" man " in f" {o} " for o in outs)
            rows.append({"alpha": a, "b": b, **scores, "man": man})
            print(rows[-1], flush=True)
    outs = [g.text for g in Decoder(bb, None, None, gen).generate_ids(prompts)]
    scores = {m: s.score for m, s in evaluate(outs, refs, ["BLEU", "ROUGE-L", "CIDEr"]).items()}
    rows.append({"alpha": 0.0, "b": 0.0, **scores, "man": sum(" man " in f" {o} " for o in outs), "blackbox": True})
    print(rows[-1])
    out = Path("benchmarks/results/calibration-probe.json")
    out.write_text(json.dumps({"cell": args.cell, "inputs": len(inputs), "null": args.null, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

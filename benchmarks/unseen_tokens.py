"""Where a trained plugin helps and where it hurts: held-out loss per target token, split by whether
the token was ever a target in the plugin's training rows.

Question: on WebNLG (unseen categories) and CommonGen the reweighting adds about nothing over its own
prompt, on E2E it adds much. A third of WebNLG's and CommonGen's held-out reference tokens never
occur as a target in their 800 training rows (E2E: 14%); the reweighter has no evidence about
them, and its head rows for them are what training left (pushed down as negatives, or initial
noise). This script measures, on validation only, the loss of the black box alone and of the plugin
on seen and unseen target tokens, and the reweighter's logit on unseen support tokens relative to the
support's mean.

Run: python benchmarks/unseen_tokens.py benchmarks/scoreboard.yaml --task webnlg --plugin FOLDER
(FOLDER: a trained plugin of that config, e.g. benchmarks/runs/scoreboard/models/webnlg/smollm2-135m/reweighter-...)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from logitplug import PromptTemplate, Reweighter, load_blackbox
from logitplug.bench import parse_config
from logitplug.bench.runner import prepare_task
from logitplug.data.core import collate, encode_all, targets_of
from logitplug.reweighter.model import read_sidecar, token_evidence
from logitplug.train import trained_rule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--task", required=True)
    ap.add_argument("--plugin", required=True, action="append", help="a trained plugin folder (repeatable)")
    ap.add_argument("--blackbox", default="smollm2-135m")
    ap.add_argument("--train-rows", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="PATH: adds the rows to PATH.json and rewrites PATH.md")
    args = ap.parse_args()

    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    data = prepare_task(cfg, args.task, args.train_rows)
    bb = load_blackbox(args.blackbox)
    tok = bb.tokenizer
    results = {}
    for folder in args.plugin:
        side = read_sidecar(folder)
        template = PromptTemplate(**side["template"])
        max_len = int(side["train_config"].get("max_length", 1024))
        train_targets = [list(e.input_ids[e.prompt_len:]) for e in encode_all(tok, template, data.train, max_len)]
        seen = token_evidence(train_targets, [ex.input for ex in data.train], bb.vocab_size, min_inputs=1)
        rw = Reweighter.from_pretrained(folder).eval()
        rule = trained_rule(folder, tok.eos_token_id)
        encoded = encode_all(tok, template, data.validation, max_len)
        sums = {k: 0.0 for k in ("bb_seen", "bb_unseen", "plug_seen", "plug_unseen", "n_seen", "n_unseen",
                                 "z_seen", "z_unseen", "nz_seen", "nz_unseen")}
        with torch.no_grad():
            for i in range(0, len(encoded), args.batch_size):
                batch = collate(encoded[i : i + args.batch_size], pad_id=0)
                targets = targets_of(batch)
                lp = bb.logprobs_at(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
                z = rw(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
                comb = rule(lp, z)
                nll_bb = -lp.gather(-1, targets[:, None])[:, 0]
                nll_pl = -comb.gather(-1, targets[:, None])[:, 0]
                is_seen = seen[targets]
                for name, mask in (("seen", is_seen), ("unseen", ~is_seen)):
                    sums[f"bb_{name}"] += float(nll_bb[mask].sum())
                    sums[f"plug_{name}"] += float(nll_pl[mask].sum())
                    sums[f"n_{name}"] += float(mask.sum())
                # reweighter logits on the support, centred on each row's support mean
                support = rule.support_mask(lp) if hasattr(rule, "support_mask") else torch.ones_like(lp, dtype=torch.bool)
                centred = z - (z * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
                for name, mask in (("seen", support & seen[None, :]), ("unseen", support & ~seen[None, :])):
                    sums[f"z_{name}"] += float(centred[mask].sum())
                    sums[f"nz_{name}"] += float(mask.sum())
        row = {
            "plugin": str(folder), "target_tokens_seen_in_training": int(seen.sum()),
            "validation_target_tokens": {"seen": int(sums["n_seen"]), "unseen": int(sums["n_unseen"])},
            "share_unseen": sums["n_unseen"] / (sums["n_seen"] + sums["n_unseen"]),
            "nll_black_box": {k: sums[f"bb_{k}"] / max(sums[f"n_{k}"], 1) for k in ("seen", "unseen")},
            "nll_plugin": {k: sums[f"plug_{k}"] / max(sums[f"n_{k}"], 1) for k in ("seen", "unseen")},
            "reweighter_logit_vs_support_mean": {k: sums[f"z_{k}"] / max(sums[f"nz_{k}"], 1) for k in ("seen", "unseen")},
            "support_tokens": {k: int(sums[f"nz_{k}"]) for k in ("seen", "unseen")},
        }
        results[str(folder)] = row
        print(json.dumps(row, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
        old.update({f"{args.task} | {k}": v for k, v in results.items()})
        out.with_suffix(".json").write_text(json.dumps(old, indent=1))
        out.with_suffix(".md").write_text(_table(old))


def _table(rows: dict) -> str:
    lines = [
        "# Held-out loss on target tokens the plugin never had as targets",
        "",
        "Validation rows only (the bench's cut: all references of 100 inputs). NLL per target token of the",
        "black box alone (with the plugin's prompt) and of the plugin at strength 1, split by whether the",
        "token occurs as a target in the plugin's training rows; and the reweighter's logit on the black",
        "box's top-20 support tokens, centred on each position's support mean.",
        "",
        "Command: `python benchmarks/unseen_tokens.py CONFIG --task TASK --plugin FOLDER --out benchmarks/results/unseen-tokens`",
        "",
        "| task / plugin | unseen share | black box seen | black box unseen | plugin seen | plugin unseen | logit seen | logit unseen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        task, folder = name.split(" | ", 1)
        label = f"{task} / {Path(folder).name}"
        lines.append(
            f"| {label} | {100 * r['share_unseen']:.1f}% | {r['nll_black_box']['seen']:.3f} | {r['nll_black_box']['unseen']:.3f} | "
            f"{r['nll_plugin']['seen']:.3f} | {r['nll_plugin']['unseen']:.3f} | "
            f"{r['reweighter_logit_vs_support_mean']['seen']:+.2f} | {r['reweighter_logit_vs_support_mean']['unseen']:+.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

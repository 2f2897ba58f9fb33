"""Where a trained plugin helps and where it hurts: held-out loss per target token, split by whether
the token was ever a target in the plugin's training rows.

Question: on WebNLG (unseen categories) and CommonGen the reweighting adds about nothing over its own
prompt, on E2E it adds much. A third of WebNLG's and CommonGen's held-out reference tokens never
occur as a target in their 800 training rows (E2E: 14%); the reweighter has no evidence about
them, and its head rows for them are what training left (pushed down as negatives, or initial
noise). This script measures, on validation only, the loss of the black box alone and of the plugin
on seen and unseen target tokens, and the reweighter's logit on unseen support tokens relative to the
support's mean. A remedy needing no training is measured beside it: every unseen support token at
the "neutral" level, the one that leaves the unseen tokens' share of the support's mass as the
black box gave it (the plugin then only redistributes mass among tokens it has evidence about).

Run: python benchmarks/unseen_tokens.py benchmarks/scoreboard.yaml --task webnlg --plugin FOLDER
(FOLDER: a trained plugin of that config, e.g. benchmarks/runs/scoreboard/models/webnlg/smollm2-135m/reweighter-...)
"""

from __future__ import annotations

import argparse
import json
import math
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
                                 "z_seen", "z_unseen", "nz_seen", "nz_unseen", "neutral_seen", "neutral_unseen")}
        with torch.no_grad():
            for i in range(0, len(encoded), args.batch_size):
                batch = collate(encoded[i : i + args.batch_size], pad_id=0)
                targets = targets_of(batch)
                lp = bb.logprobs_at(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
                z = rw(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
                comb = rule(lp, z)
                nll_bb = -lp.gather(-1, targets[:, None])[:, 0]
                nll_pl = -comb.gather(-1, targets[:, None])[:, 0]
                support = rule.support_mask(lp) if hasattr(rule, "support_mask") else torch.ones_like(lp, dtype=torch.bool)
                nll_neutral = -rule(lp, neutral_unseen(lp, z, support, seen, rule.alpha)).gather(-1, targets[:, None])[:, 0]
                is_seen = seen[targets]
                for name, mask in (("seen", is_seen), ("unseen", ~is_seen)):
                    sums[f"bb_{name}"] += float(nll_bb[mask].sum())
                    sums[f"plug_{name}"] += float(nll_pl[mask].sum())
                    sums[f"neutral_{name}"] += float(nll_neutral[mask].sum())
                    sums[f"n_{name}"] += float(mask.sum())
                # reweighter logits on the support, centred on each row's support mean
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
            "nll_plugin_neutral_unseen": {k: sums[f"neutral_{k}"] / max(sums[f"n_{k}"], 1) for k in ("seen", "unseen")},
            "nll_all": {"black box": (sums["bb_seen"] + sums["bb_unseen"]) / (sums["n_seen"] + sums["n_unseen"]),
                        "plugin": (sums["plug_seen"] + sums["plug_unseen"]) / (sums["n_seen"] + sums["n_unseen"]),
                        "plugin, unseen neutral": (sums["neutral_seen"] + sums["neutral_unseen"]) / (sums["n_seen"] + sums["n_unseen"])},
            "strength": rule.alpha,
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


def neutral_unseen(lp: torch.Tensor, z: torch.Tensor, support: torch.Tensor, seen: torch.Tensor, alpha: float) -> torch.Tensor:
    """``z`` with every unseen support token at the level c that keeps the black box's split of the
    support's mass between seen and unseen tokens: exp(alpha * c) = E_{p_bb | seen support}[exp(alpha * z)]."""
    known = support & seen[None, :]
    lifted = torch.logsumexp(torch.where(known, lp + alpha * z, -math.inf), -1, keepdim=True)
    base = torch.logsumexp(torch.where(known, lp, -math.inf), -1, keepdim=True)
    level = torch.nan_to_num((lifted - base) / alpha if alpha else torch.zeros_like(base), nan=0.0, posinf=0.0, neginf=0.0)
    return torch.where(support & ~seen[None, :], level, z)


def _table(rows: dict) -> str:
    lines = [
        "# Held-out loss on target tokens the plugin never had as targets",
        "",
        "Validation rows only (the bench's cut: all references of 100 inputs). NLL per target token of the",
        "black box alone (with the plugin's prompt) and of the plugin at the strength its held-out loss chose",
        "(its folder's, as `trained_rule` reads it; not the strength the bench's text choice then decoded with), split by whether the",
        "token occurs as a target in the plugin's training rows; and the reweighter's logit on the black",
        "box's top-20 support tokens, centred on each position's support mean.",
        "",
        "Command: `python benchmarks/unseen_tokens.py CONFIG --task TASK --plugin FOLDER --out benchmarks/results/unseen-tokens`",
        "",
        "| task / plugin | unseen share | black box seen | black box unseen | plugin seen | plugin unseen | logit seen | logit unseen | all: black box | all: plugin | all: plugin, unseen neutral |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        task, folder = name.split(" | ", 1)
        label = f"{task} / {Path(folder).name}"
        lines.append(
            f"| {label} | {100 * r['share_unseen']:.1f}% | {r['nll_black_box']['seen']:.3f} | {r['nll_black_box']['unseen']:.3f} | "
            f"{r['nll_plugin']['seen']:.3f} | {r['nll_plugin']['unseen']:.3f} | "
            f"{r['reweighter_logit_vs_support_mean']['seen']:+.2f} | {r['reweighter_logit_vs_support_mean']['unseen']:+.2f} | "
            + (" | ".join(f"{v:.4f}" for v in r["nll_all"].values()) + f" (strength {r['strength']:g})" if "nll_all" in r else " | ") + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

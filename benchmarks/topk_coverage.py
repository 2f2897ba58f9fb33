"""How much of each task's target text lies inside the black box's top-k next tokens.

Question: the default recipe's third candidate (a whole-vocabulary reweighter at black-box weight
0.5, `--try-blackbox-weight`) exists because Adidas's catalogue sentences lie outside the black
box's top 20, which a top-20 support cannot reach; held-out text keeps it on Adidas and rejects it
on E2E, WebNLG and CommonGen. If the share of training target tokens inside the top 20 separates
those tasks, it is a cheap signal, known once the training rows' log-probs are recorded, for when
the costly whole-vocabulary training is worth trying at all.

For each task: training rows (the scoreboard's cut), teacher-forced through the black box behind
the task prompt with 0 and with 3 demonstrations (drawn by seed 0, as icl-3 draws them); the
share of target tokens whose rank under the black box is below k, for k = 1, 5, 20, 256, and the
mean log-prob of the target.

Run: python benchmarks/topk_coverage.py benchmarks/scoreboard.yaml --rows 200
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from _results import save
from logitplug import load_blackbox
from logitplug.bench import parse_config
from logitplug.bench.runner import prepare_task
from logitplug.data import TASKS, get_template
from logitplug.data.core import collate, draw_demonstrations, encode_all, targets_of

KS = (1, 5, 20, 256)


def coverage(bb, template, rows, batch_size: int, max_length: int) -> dict[str, float]:
    encoded = sorted(encode_all(bb.tokenizer, template, rows, max_length), key=lambda e: len(e.input_ids))
    ranks, target_lp = [], []
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = collate(encoded[i : i + batch_size], pad_id=0)
            lp = bb.logprobs_at(batch["input_ids"], batch["attention_mask"], batch["target_mask"])
            tgt = targets_of(batch)
            t = lp.gather(-1, tgt[:, None])
            ranks.append((lp > t).sum(-1))
            target_lp.append(t.squeeze(-1))
    r, t = torch.cat(ranks), torch.cat(target_lp)
    out = {f"top{k}": round(float((r < k).float().mean()) * 100, 2) for k in KS}
    out["mean_target_logprob"] = round(float(t.mean()), 3)
    out["tokens"] = int(r.numel())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--blackbox", default="smollm2-135m")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the config's)")
    ap.add_argument("--rows", type=int, default=200, help="training rows measured per task")
    ap.add_argument("--demonstrations", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--name", default="topk-coverage")
    args = ap.parse_args()

    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    bb = load_blackbox(args.blackbox)
    tasks = args.tasks.split(",") if args.tasks else list(cfg.tasks)
    rows_out = []
    for task in tasks:
        data = prepare_task(cfg, task, cfg.data.get("train_rows"))
        template = get_template(cfg.templates.get(task, TASKS[task].template))
        demos, rest = draw_demonstrations(data.train, args.demonstrations, seed=0)
        measured = rest[: args.rows]
        for k, tmpl in ((0, template), (args.demonstrations, replace(template, demos=tuple((d.input, d.target) for d in demos)))):
            got = coverage(bb, tmpl, measured, args.batch_size, args.max_length)
            rows_out.append({"task": task, "blackbox": args.blackbox, "demonstrations": k, "rows": len(measured), **got})
            print(rows_out[-1], flush=True)
    header = ("| task | demonstrations | target tokens | in top 1 | top 5 | top 20 | top 256 | mean target log-prob |\n"
              "|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {r['task']} | {r['demonstrations']} | {r['tokens']} | {r['top1']:.1f}% | {r['top5']:.1f}% | {r['top20']:.1f}% | "
        f"{r['top256']:.1f}% | {r['mean_target_logprob']:.2f} |\n" for r in rows_out)
    save(args.name, rows_out,
         f"# Target tokens inside the black box's top k ({args.blackbox})\n\n"
         f"{args.rows} training rows per task (the scoreboard's cut), teacher-forced behind the task prompt.", table)


if __name__ == "__main__":
    main()

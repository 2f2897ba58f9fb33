"""Speed benchmark: decoding with and without the plugin, training on the fly vs from the cache.

All ratios come from measurements taken side by side in one run, interleaved (A, B, A, B, ...),
because the machine is shared and noisy. Peak memory is measured in a fresh child process per
configuration. Results: benchmarks/results/speed.json and speed.md.

    python benchmarks/speed.py                       # the command behind BENCHMARKS.md
    python benchmarks/speed.py --plugin runs/quickstart/plugin   # also: cached-vs-exact loss of a trained plugin
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from logitplug import __version__
from logitplug.blackbox import load_blackbox
from logitplug.cache import LogProbCache
from logitplug.combine import BlackBoxOnly, ProductRule, SupportProductRule
from logitplug.data import TEMPLATES, collate, draw_demonstrations, e2e_paper_splits, encode_all, encode_prompt, targets_of
from logitplug.decode import Decoder, GenerationConfig
from logitplug.recipes import DEFAULT_RECIPE, get_recipe
from logitplug.reweighter import Reweighter, ReweighterConfig
from logitplug.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def _plugin(bb, path: str | None) -> Reweighter:
    if path:
        return Reweighter.from_pretrained(path, bb.fingerprint)
    # speed does not depend on the weights: an untrained plugin of the default shape
    return Reweighter.build(ReweighterConfig(), bb.vocab_size, bb.tokenizer, seed=0)


def decode_speed(bb, plugin, prompts, batch_size: int, repeats: int, max_new_tokens: int) -> dict:
    """Per-token decoding time (prefill included), black box alone vs with plugin, interleaved.

    Both methods generate exactly ``max_new_tokens`` per prompt (EOS suppressed until then), so
    the two do the same number of steps and their times compare like with like."""
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, batch_size=batch_size,
                           repetition_penalty=1.1)
    methods = {"blackbox": Decoder(bb, None, BlackBoxOnly(), cfg), "plugin": Decoder(bb, plugin, ProductRule(), cfg),
               "plugin_top20": Decoder(bb, plugin, SupportProductRule(20), cfg)}
    per_token = {name: [] for name in methods}
    for name, dec in methods.items():  # warm-up
        dec.generate_ids(prompts[:batch_size])
    for _ in range(repeats):
        for name, dec in methods.items():
            t0 = time.perf_counter()
            gens = dec.generate_ids(prompts)
            seconds = time.perf_counter() - t0
            per_token[name].append(seconds / sum(len(g.token_ids) for g in gens))
    med = {k: statistics.median(v) for k, v in per_token.items()}
    return {
        "batch_size": batch_size, "prompts": len(prompts), "repeats": repeats,
        "blackbox_tok_s": 1 / med["blackbox"], "plugin_tok_s": 1 / med["plugin"],
        "plugin_overhead_pct": 100 * (med["plugin"] / med["blackbox"] - 1),
        "plugin_top20_tok_s": 1 / med["plugin_top20"],
        "plugin_top20_overhead_pct": 100 * (med["plugin_top20"] / med["blackbox"] - 1),
    }


def train_speed(bb, rows, eval_rows, repeats: int) -> dict:
    """Seconds per epoch on the fly (black box every batch) vs replayed from the cache, with the
    default recipe (its demonstration in every prompt, its top-k support, copy augmentation)."""
    recipe = get_recipe(DEFAULT_RECIPE)
    # the count the recipe chooses on E2E (benchmarks/results/demo-choice.md): 1
    count = min(recipe.demonstrations) if isinstance(recipe.demonstrations, tuple) else recipe.demonstrations
    demos, rows = draw_demonstrations(rows, count, 0)
    template = TEMPLATES["e2e"].with_demonstrations(demos)
    # the strength choice by held-out text decodes after training: not part of an epoch's cost
    text_choice = ("strength_by", "strength_candidates", "strength_margin", "select_renamed", "select_renamed_syllables")
    settings = {**{k: v for k, v in recipe.train.items() if k not in text_choice}, "epochs": 1, "progress": False,
                "checkpoint_every": 0}
    # cached: the default (the loss over the support's head rows); cached_dense: the same loss over
    # the whole vocabulary (TrainConfig.sparse_support=False), the path before session 15
    times = {"on_the_fly": [], "cached": [], "cached_dense": []}
    with tempfile.TemporaryDirectory() as tmp:
        warm = TrainConfig(output_dir=f"{tmp}/warm", cache_dir=f"{tmp}/cache", **settings)
        train(bb, rows, eval_rows, template, warm)  # fills the cache
        tokens = sum(len(e.input_ids) for e in encode_all(bb.tokenizer, template, rows, warm.max_length))
        for r in range(repeats):
            for mode in times:
                cfg = TrainConfig(output_dir=f"{tmp}/{mode}{r}", cache_dir=f"{tmp}/cache", cache=mode != "on_the_fly",
                                  sparse_support=mode != "cached_dense", **settings)
                res = train(bb, rows, eval_rows, template, cfg)
                times[mode].append(res.history[0]["epoch_seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "recipe": recipe.name, "demonstrations": count, "rows": len(rows), "tokens": tokens, "repeats": repeats,
        "on_the_fly_epoch_s": med["on_the_fly"], "cached_epoch_s": med["cached"],
        "on_the_fly_tok_s": tokens / med["on_the_fly"], "cached_tok_s": tokens / med["cached"],
        "cached_speedup": med["on_the_fly"] / med["cached"],
        "cached_dense_epoch_s": med["cached_dense"], "cached_dense_tok_s": tokens / med["cached_dense"],
        "support_rows_speedup": med["cached_dense"] / med["cached"],
        "cached_epoch_fraction": med["cached"] / med["on_the_fly"],
    }


def shared_prefix_speed(bb, rows, test_rows, demos: int, repeats: int, max_new_tokens: int) -> dict:
    """Prompts that start with the same fixed demonstrations: the common prefix computed once per
    batch (``LocalBlackBox.share_prefix``) vs once per row, for recording training log-probs
    (teacher forcing, batches of 8) and for decoding (batch 16), interleaved."""
    chosen, rest = draw_demonstrations(rows, demos, 0)
    template = TEMPLATES["e2e"].with_demonstrations(chosen)
    enc = encode_all(bb.tokenizer, template, rest[:32], 1024)
    prompts = [encode_prompt(bb.tokenizer, template, ex.input) for ex in test_rows[:16]]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, batch_size=16,
                           repetition_penalty=1.1)

    def record() -> None:
        for i in range(0, len(enc), 8):
            b = collate(enc[i:i + 8], 0)
            bb.logprobs_at(b["input_ids"], b["attention_mask"], b["target_mask"])

    def decode() -> None:
        Decoder(bb, None, BlackBoxOnly(), cfg).generate_ids(prompts)

    times = {(job, shared): [] for job in ("record", "decode") for shared in (False, True)}
    try:
        for r in range(repeats + 1):  # the first round warms up
            for (job, shared), seconds in times.items():
                bb.share_prefix = shared
                t0 = time.perf_counter()
                record() if job == "record" else decode()
                if r:
                    seconds.append(time.perf_counter() - t0)
    finally:
        bb.share_prefix = True
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "demonstrations": demos, "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
        "record_rows": len(enc), "record_s": med[("record", False)], "record_shared_s": med[("record", True)],
        "record_speedup": med[("record", False)] / med[("record", True)],
        "decode_prompts": len(prompts), "decode_tokens": max_new_tokens, "decode_s": med[("decode", False)],
        "decode_shared_s": med[("decode", True)], "decode_speedup": med[("decode", False)] / med[("decode", True)],
        "repeats": repeats,
    }


def cache_loss_gap(bb, plugin, rows, top_k: int) -> dict:
    """Held-out NLL of the combined model: exact black-box log-probs vs the top-k cache."""
    enc = encode_all(bb.tokenizer, TEMPLATES["e2e"], rows, 256)
    exact_sum = cached_sum = n = 0.0
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        cache = LogProbCache(tmp, bb.fingerprint, bb.vocab_size, top_k)
        for i in range(0, len(enc), 8):
            chunk = enc[i:i + 8]
            b = collate(chunk, 0)
            full = bb.logprobs_at(b["input_ids"], b["attention_mask"], b["target_mask"])
            tg = targets_of(b)
            entries, start = [], 0
            for e in chunk:
                k = len(e.input_ids) - e.prompt_len
                entries.append(cache.put(e, full[start:start + k], tg[start:start + k]))
                start += k
            rw = plugin(b["input_ids"], b["attention_mask"], b["target_mask"])
            exact_sum += float(-ProductRule()(full, rw).gather(-1, tg[:, None]).sum())
            cached_sum += float(-ProductRule()(cache.dense(entries), rw).gather(-1, tg[:, None]).sum())
            n += tg.numel()
    return {"top_k": top_k, "tokens": int(n), "exact_nll": exact_sum / n, "cached_nll": cached_sum / n,
            "relative_gap_pct": 100 * (cached_sum - exact_sum) / exact_sum}


def _peak_child(kind: str, args: dict, queue) -> None:
    bb = load_blackbox(args["blackbox"])
    prompts = args["prompts"]
    if kind.startswith("decode"):
        plugin = _plugin(bb, args["plugin"]) if kind == "decode-plugin" else None
        Decoder(bb, plugin, ProductRule() if plugin else BlackBoxOnly(),
                GenerationConfig(max_new_tokens=32, batch_size=8)).generate_ids(prompts)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(output_dir=f"{tmp}/p", cache_dir=f"{tmp}/c", cache=kind == "train-cached",
                              epochs=2, progress=False, checkpoint_every=0)
            train(bb, args["rows"], args["eval_rows"], TEMPLATES["e2e"], cfg)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            queue.put(int(line.split()[1]) / 1024)


def peak_memory(args: dict) -> dict:
    ctx = mp.get_context("spawn")
    out = {}
    for kind in ("decode-blackbox", "decode-plugin", "train-on-the-fly", "train-cached"):
        q = ctx.Queue()
        p = ctx.Process(target=_peak_child, args=(kind, args, q))
        p.start()
        p.join()
        out[kind] = round(q.get(), 1) if not q.empty() else None
    return {"peak_rss_mib": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blackbox", default="smollm2-135m")
    ap.add_argument("--plugin", default=None, help="trained plugin folder (default: untrained, default shape)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=64)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="only the decoding comparison (a few minutes)")
    ap.add_argument("--train-only", action="store_true", help="only the training-epoch comparison")
    args = ap.parse_args()

    torch.manual_seed(0)
    bb = load_blackbox(args.blackbox)
    plugin = _plugin(bb, args.plugin)
    splits = e2e_paper_splits(seed=0)
    prompts = [encode_prompt(bb.tokenizer, TEMPLATES["e2e"], ex.input) for ex in splits["test"][: args.prompts]]
    rows, eval_rows = splits["train"][: args.train_rows], splits["validation"][:16]
    report = {
        "command": "python benchmarks/speed.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items() if v not in (None, False)),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "logitplug": __version__, "blackbox": bb.fingerprint,
        "plugin": args.plugin or "untrained, default shape (1 layer, hidden 256)",
    }
    if not args.train_only:
        report["decode"] = [decode_speed(bb, plugin, prompts[: (8 if bs == 1 else len(prompts))], bs, args.repeats,
                                         args.max_new_tokens) for bs in (1, 8)]
    if args.train_only:
        report["train"] = train_speed(bb, rows, eval_rows, args.repeats)
    elif not args.decode_only:
        report["train"] = train_speed(bb, rows, eval_rows, args.repeats)
        report["shared_prefix"] = [shared_prefix_speed(bb, splits["train"], splits["test"], k, args.repeats,
                                                       args.max_new_tokens) for k in (1, 3)]
        report["cache_loss_gap"] = [cache_loss_gap(bb, plugin, splits["validation"][:48], k) for k in (16, 64, 256)]
    name = "speed-decode" if args.decode_only else "speed-train" if args.train_only else "speed"
    if args.blackbox != "smollm2-135m":
        name += "-" + Path(args.blackbox).name
    if not args.skip_memory and not args.decode_only and not args.train_only:
        report.update(peak_memory({"blackbox": args.blackbox, "plugin": args.plugin, "prompts": prompts[:8],
                                   "rows": rows[:32], "eval_rows": eval_rows[:8]}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS / f"{name}.md").write_text(to_markdown(report))
    print(to_markdown(report))


def to_markdown(r: dict) -> str:
    lines = [f"Command: `{r['command']}`  ", f"Black box `{r['blackbox']}`, plugin: {r['plugin']}; {r['machine']}.", "",
             "| decoding | black box tok/s | + plugin tok/s | plugin overhead | + plugin over top-20 support tok/s | its overhead |",
             "|---|---|---|---|---|---|"]
    for d in r.get("decode", []):
        lines.append(f"| batch {d['batch_size']} ({d['prompts']} prompts, median of {d['repeats']}) | "
                     f"{d['blackbox_tok_s']:.1f} | {d['plugin_tok_s']:.1f} | {d['plugin_overhead_pct']:+.1f}% | "
                     f"{d['plugin_top20_tok_s']:.1f} | {d['plugin_top20_overhead_pct']:+.1f}% |")
    if "train" not in r:
        return "\n".join(lines) + "\n"
    t = r["train"]
    lines += ["", "| training epoch | seconds | tokens/s |", "|---|---|---|",
              f"| on the fly (black box every batch) | {t['on_the_fly_epoch_s']:.1f} | {t['on_the_fly_tok_s']:.0f} |",
              f"| from the cache | {t['cached_epoch_s']:.1f} | {t['cached_tok_s']:.0f} |",
              f"| **cached speed-up** | **{t['cached_speedup']:.1f}x** | ({t['rows']} rows, median of {t['repeats']}; "
              f"recipe {t.get('recipe', 'paper')}: a cached epoch costs {100 / t['cached_speedup']:.0f}% of one on the fly) |",
              ]
    if "cached_dense_epoch_s" in t:
        lines += [f"| from the cache, loss over the whole vocabulary (before session 15) | {t['cached_dense_epoch_s']:.1f} | "
                  f"{t['cached_dense_tok_s']:.0f} |",
                  f"| **support head rows vs whole vocabulary** | **{t['support_rows_speedup']:.1f}x** | (same loss; "
                  "tests/test_train.py) |"]
    if "shared_prefix" not in r:
        return "\n".join(lines) + "\n"
    lines += [
              "", "| prompts with fixed demonstrations | tokens/prompt | prefix once per row, s | once per batch, s | speed-up |",
              "|---|---|---|---|---|"]
    for p in r.get("shared_prefix", []):
        lines.append(f"| {p['demonstrations']} demo(s): record log-probs of {p['record_rows']} training rows (batch 8) | "
                     f"{p['prompt_tokens_mean']:.0f} | {p['record_s']:.2f} | {p['record_shared_s']:.2f} | "
                     f"**{p['record_speedup']:.2f}x** |")
        lines.append(f"| {p['demonstrations']} demo(s): decode {p['decode_prompts']} prompts x {p['decode_tokens']} tokens "
                     f"(batch 16) | {p['prompt_tokens_mean']:.0f} | {p['decode_s']:.2f} | {p['decode_shared_s']:.2f} | "
                     f"**{p['decode_speedup']:.2f}x** |")
    lines += ["", "| cache top-k | exact NLL/token | cached NLL/token | gap |", "|---|---|---|---|"]
    for g in r["cache_loss_gap"]:
        lines.append(f"| {g['top_k']} | {g['exact_nll']:.4f} | {g['cached_nll']:.4f} | {g['relative_gap_pct']:+.2f}% |")
    if "peak_rss_mib" in r:
        lines += ["", "| peak memory (fresh process) | MiB |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in r["peak_rss_mib"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

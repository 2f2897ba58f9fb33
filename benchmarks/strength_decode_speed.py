"""Choosing the reweighting strength: one decode per strength vs one prompt pass forked per strength.

The default recipe decodes the same held-out prompts at each candidate strength (0 .. 1.5) to pick
the one whose text scores best. Since session 16 ``Decoder.generate_ids_many`` runs each batch's
prompts through both models once and forks the decoding state per strength. This times both ways
side by side in one run, on E2E validation inputs with the recipe's prompt (3 demonstrations) and
rule (top-20 support plus end-of-text), with a reweighter of the recipe's shape (random weights:
speed does not depend on training), and checks that both give the same token ids.

    python benchmarks/strength_decode_speed.py --inputs 48 --repeats 2

Writes benchmarks/results/strength-decode-speed.json and .md.
"""

from __future__ import annotations

import argparse
import time

from _results import save
from logitplug import Reweighter, ReweighterConfig, load_blackbox
from logitplug.data import draw_demonstrations, encode_prompt, get_template, group_by_input
from logitplug.data.tasks import load_task
from logitplug.decode import Decoder, GenerationConfig
from logitplug.recipes import get_recipe
from logitplug.train import TrainConfig, at_strength


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blackbox", default="smollm2-135m")
    ap.add_argument("--inputs", type=int, default=48, help="held-out inputs decoded at every strength")
    ap.add_argument("--demonstrations", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each way, alternated; the fastest is kept")
    args = ap.parse_args()
    recipe = get_recipe("logitplug")
    bb = load_blackbox(args.blackbox)
    splits = load_task("e2e", seed=0)
    demos, _ = draw_demonstrations(splits["train"], args.demonstrations, 0)
    template = get_template("e2e").with_demonstrations(demos) if args.demonstrations else get_template("e2e")
    held_out = group_by_input(splits["validation"])[: args.inputs]
    prompts = [encode_prompt(bb.tokenizer, template, ex.input) for ex in held_out]
    tcfg = TrainConfig(output_dir="-", **recipe.train)
    rule = tcfg.combination(bb.tokenizer.eos_token_id)
    strengths = list(tcfg.strength_candidates)
    rules = [at_strength(rule, a) for a in strengths]
    rw = Reweighter.build(ReweighterConfig(**{**recipe.reweighter, "zero_init_head": False}), bb.vocab_size, bb.tokenizer, seed=0)
    gen = GenerationConfig(max_new_tokens=64, repetition_penalty=1.1, batch_size=16, stop_strings=("\n\n",))
    decoder = Decoder(bb, rw, rule, gen)
    times: dict[str, list[float]] = {"one decode per strength": [], "one prompt pass, forked": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        apart = [Decoder(bb, rw, r, gen).generate_ids(prompts) for r in rules]
        times["one decode per strength"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        together = decoder.generate_ids_many(prompts, rules)
        times["one prompt pass, forked"].append(time.perf_counter() - t0)
    same = [[g.token_ids for g in out] for out in apart] == [[g.token_ids for g in out] for out in together]
    best = {k: min(v) for k, v in times.items()}
    ratio = best["one decode per strength"] / best["one prompt pass, forked"]
    prompt_tokens = sum(map(len, prompts)) / len(prompts)
    data = {"blackbox": args.blackbox, "inputs": len(prompts), "mean_prompt_tokens": prompt_tokens,
            "strengths": strengths, "seconds": times, "best_seconds": best, "speedup": ratio, "same_token_ids": same}
    table = "\n".join([
        "| way | seconds (fastest of %d) | speed-up |" % args.repeats, "|---|---|---|",
        f"| one decode per strength | {best['one decode per strength']:.1f} | 1.00x |",
        f"| one prompt pass, forked | {best['one prompt pass, forked']:.1f} | {ratio:.2f}x |",
        "", f"Same token ids both ways: {same}.",
    ])
    intro = (f"# Strength choice decoding ({args.blackbox}, {len(prompts)} E2E validation inputs, "
             f"{args.demonstrations} demonstrations, mean prompt {prompt_tokens:.0f} tokens, strengths "
             f"{', '.join(f'{a:g}' for a in strengths)})")
    save("strength-decode-speed", data, intro, table)


if __name__ == "__main__":
    main()

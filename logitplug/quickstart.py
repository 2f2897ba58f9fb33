"""The main job: adapt a black box to E2E NLG (cleaned) and show the effect against zero-shot.

Follows the paper's protocol (train on the validation split's 60% by input, early-stop on the
other 40%, test on the test split), subsampled so that the whole job fits in about half an
hour on two CPU cores. The plugin is trained with a named recipe (default: the library's
default); when the recipe puts demonstrations in the prompt, the black box alone with that same
prompt is shown too, so the plugin's own share of the gain is visible. Every number it prints is
computed in this run.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence

from ._io import stable_key
from .blackbox import load_blackbox
from .blackbox.registry import missing_token_vectors, token_vector_source
from .combine import BlackBoxOnly
from .data import TEMPLATES, Example, e2e_paper_splits, encode_prompt
from .decode import Decoder, GenerationConfig
from .eval import evaluate, parse_mr, slot_error_rate
from .recipes import DEFAULT_RECIPE, get_recipe
from .reweighter import ReweighterConfig
from .selection import fix_demonstrations, held_out_scorers
from .train import (
    CHOICE_NAME, TrainConfig, blackbox_weight_conflict, plugin_candidates, plugin_finished, token_vector_conflict, train,
    load_plugin, train_and_choose,
)


def _sample_by_input(rows: Sequence[Example], n: int, seed: int) -> list[Example]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def run_quickstart(
    data_dir: str | Path | None,
    output_dir: str | Path,
    blackbox_name: str = "smollm2-135m",
    train_rows: int = 800,
    eval_rows: int = 200,
    test_inputs: int = 200,
    epochs: int = 6,
    seed: int = 0,
    recipe: str = DEFAULT_RECIPE,
    max_new_tokens: int = 64,
) -> dict:
    t_start = time.perf_counter()
    out = Path(output_dir)
    splits = e2e_paper_splits(data_dir, seed=seed)
    train_set = _sample_by_input(splits["train"], train_rows, seed)
    eval_set = _sample_by_input(splits["validation"], eval_rows, seed)
    test_set = splits["test"][:test_inputs]
    print(f"E2E cleaned: {len(train_set)} training rows, {len(eval_set)} early-stopping rows, "
          f"{len(test_set)} test inputs (all references kept)")

    bb = load_blackbox(blackbox_name)
    chosen = get_recipe(recipe)
    print(f"recipe {chosen.name!r}: {chosen.description}")
    template = TEMPLATES["e2e"]
    # a blank line ends an answer (no E2E reference holds one; demonstrations are separated by one)
    gcfg = GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=1.1, batch_size=8, stop_strings=("\n\n",))
    all_rows = train_set  # the whole-vocabulary candidate trains on every row, behind the prompt without demonstrations
    prompted, train_set, demo_info = fix_demonstrations(bb, template, train_set, eval_set, chosen.demonstrations, seed,
                                                        gcfg, max_inputs=50)
    if "demonstration_scores" in demo_info:
        print(f"demonstrations: {demo_info['demonstrations']} (validation BLEU of the black box alone by count: "
              f"{demo_info['demonstration_scores']})")
    # a plugin made with other settings (recipe, data, epochs, seed, black box) is never reused
    made_with = stable_key(bb.fingerprint, chosen.name, chosen.settings(), train_rows, eval_rows, epochs, seed,
                           demo_info["demonstrations"], *([max_new_tokens] if max_new_tokens != 64 else []))
    plugin_dir = out / f"plugin-{chosen.name}-{made_with}"
    tcfg = TrainConfig(output_dir=str(plugin_dir), epochs=epochs, seed=seed, cache_dir=str(out / "logprob-cache"),
                       select_inputs=50, **chosen.train)
    if plugin_finished(plugin_dir):
        print(f"reusing the plugin already trained in {plugin_dir}")
    else:
        scorers = held_out_scorers(tcfg, bb, prompted, eval_set, gcfg)  # the recipe's strength choice, if any
        rcfg = ReweighterConfig(**chosen.reweighter)
        obstacle = token_vector_conflict(rcfg, tcfg.strength_by) or missing_token_vectors(blackbox_name)
        weight = chosen.try_blackbox_weight  # a whole-vocabulary plugin trusting the black box less, where it applies
        candidates = plugin_candidates(  # a second plugin on the black box's own token vectors, where it applies
            rcfg, token_vector_source(blackbox_name) if chosen.try_token_vectors and obstacle is None else None,
            weight if weight and blackbox_weight_conflict(weight, tcfg.rule, tcfg.strength_by) is None else 0.0,
            (template, all_rows), chosen.try_blackbox_weight_below, chosen.blackbox_weight_train)
        if len(candidates) > 1:
            result, choice = train_and_choose(bb, train_set, eval_set, prompted, tcfg, candidates, generation=gcfg,
                                              average_ties=chosen.average_ties, **scorers)
            print(f"kept the {choice['chosen']} reweighter (held-out text mix: "
                  + ", ".join(f"{n} {m:.3f}" for n, m in choice["held_out_mix"].items()) + ")")
            if "averaged" in choice:
                print(f"held-out text ties {' and '.join(choice['averaged']['members'])}: decoding through them together")
            for name, why in choice.get("not_tried", {}).items():
                print(f"{name} not tried: {why}")
        else:
            if chosen.try_token_vectors:
                print(f"training one reweighter (no second one on the black box's token vectors: {obstacle})")
            result = train(bb, train_set, eval_set, prompted, tcfg, rcfg, **scorers)
        print(f"held-out loss per token: plugin {result.best_loss:.3f}, black box alone {result.blackbox_loss:.3f}")
    t_trained = time.perf_counter()
    plugin = load_plugin(plugin_dir, bb)
    sidecar = plugin.sidecar
    strength = {"strength": sidecar["train_config"].get("alpha"), **sidecar.get("strength_selection", {})}
    print(f"reweighting strength {strength['strength']:g}"
          + (f" (by held-out {strength['by']}; held-out loss chose {strength['by_loss']:g})" if "by" in strength else ""))

    refs = [list(ex.references) for ex in test_set]
    venue_names = sorted({v for ex in splits["train"] + splits["validation"] + splits["test"]
                          for k, v in parse_mr(ex.input).items() if k in ("name", "near")})
    runs = [("zero-shot", template, BlackBoxOnly(), None)]
    if prompted is not template:
        runs.append((f"{demo_info['demonstrations']}-shot", prompted, BlackBoxOnly(), None))
    # behind the prompt the kept reweighter trained under (the whole-vocabulary one trains without demonstrations)
    runs.append(("plugin", plugin.template, plugin.rule, plugin.reweighter))
    outputs, scores = {}, {}
    for name, tmpl, rule, rw in runs:
        prompts = [encode_prompt(bb.tokenizer, tmpl, ex.input) for ex in test_set]
        t0 = time.perf_counter()
        gens = Decoder(bb, rw, rule, gcfg).generate_ids(prompts, progress=True)
        outputs[name] = [g.text for g in gens]
        decode_seconds = time.perf_counter() - t0
        scores[name] = {m: s.score for m, s in evaluate(outputs[name], refs).items()}
        scores[name]["SER"] = slot_error_rate(outputs[name], [ex.input for ex in test_set], venue_names).score
        scores[name]["decode_seconds"] = decode_seconds

    print("\n=== examples (test split) ===")
    for i in range(min(5, len(test_set))):
        print(f"\ninput:     {test_set[i].input}")
        for name in outputs:
            print(f"{name + ':':10s} {outputs[name][i]}")
        print(f"reference: {test_set[i].references[0]}")
    print(f"\n=== {len(test_set)} test inputs, greedy, repetition penalty 1.1 on generated tokens ===")
    columns = ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr", "SER"]
    print(f"{'method':10s} " + " ".join(f"{c:>8s}" for c in columns) + "   (SER: slot error rate, lower is better)")
    for name, s in scores.items():
        print(f"{name:10s} " + " ".join(f"{s[c]:8.2f}" for c in columns))
    report = {
        "blackbox": bb.fingerprint, "recipe": {"name": chosen.name, **chosen.settings()}, "demonstrations": demo_info,
        "plugin_demonstrations": len(plugin.template.demos), "train_rows": len(train_set), "eval_rows": len(eval_set), "strength": strength,
        "test_inputs": len(test_set), "seed": seed, "scores": scores, "plugin_dir": str(plugin_dir),
        "reweighter_choice": json.loads((plugin_dir / CHOICE_NAME).read_text()) if (plugin_dir / CHOICE_NAME).exists() else None,
        "train_seconds": t_trained - t_start, "total_seconds": time.perf_counter() - t_start,
        "generations": [{"input": ex.input, **{k: v[i] for k, v in outputs.items()}} for i, ex in enumerate(test_set)],
    }
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"\nthe plugin (for `logitplug generate --plugin`): {plugin_dir}")
    print(f"results and all generations: {out / 'results.json'} (total {report['total_seconds']:.0f} s)")
    return report

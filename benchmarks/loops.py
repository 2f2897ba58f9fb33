"""How long each method's test outputs are and how often they loop (repeat a word 4-gram), from
the finished cells of a bench config: no model runs. Issue "make the plugin win": on Adidas
(descriptions of ~60 words, 160 new tokens) the plugin has the best held-out likelihood and
loses BLEU and ROUGE-L to the small model alone and the mixture at 0.75; this says whether its
greedy text runs in circles where theirs does not, and (``--phrases``) how often each writes the
catalogue's stock sentences. Writes benchmarks/results/loops-TASK.{json,md}.

    python benchmarks/loops.py benchmarks/scoreboard.yaml --task adidas \
        --phrases "high-performance recycled materials|recycled content as part of our ambition"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import finished_cells, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label  # noqa: E402


def loops(text: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice in ``text``.

    >>> loops("a b c d a b c d"), loops("a b c d e f g h")
    (True, False)
    """
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--metrics", default="BLEU,METEOR,ROUGE-L,CIDEr")
    ap.add_argument("--phrases", default="", help="'|'-separated phrases: the share of outputs holding any of them")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.task not in cfg.tasks:
        raise SystemExit(f"task {args.task!r} is not in {args.config} (it has {', '.join(cfg.tasks)})")
    metrics = args.metrics.split(",")
    phrases = [p for p in args.phrases.split("|") if p]
    bb = blackbox_label(cfg.blackboxes[0])
    rows, data = [], []
    for method in cfg.methods:
        cells = finished_cells(cfg, args.task, bb, method)
        if not cells:
            continue
        per_seed = []
        for seed, cell in sorted(cells.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
            outs = [g["output"] for g in cell["generations"]]
            per_seed.append({"seed": seed, "words": statistics.mean(len(o.split()) for o in outs),
                             "looping": statistics.mean(loops(o) for o in outs),
                             "phrases": statistics.mean(any(p in o for p in phrases) for o in outs) if phrases else None,
                             "eval_loss": cell["info"].get("eval_loss"),
                             **{m: cell["scores"].get(m) for m in metrics}})
        mean = {k: statistics.mean(s[k] for s in per_seed if s[k] is not None) if any(s[k] is not None for s in per_seed) else None
                for k in ["words", "looping", "phrases", "eval_loss", *metrics]}
        data.append({"method": method.name, "seeds": [s["seed"] for s in per_seed], "per_seed": per_seed, "mean": mean})
        loss = "—" if mean["eval_loss"] is None else f"{mean['eval_loss']:.2f}"
        phrase_cell = f" {100 * mean['phrases']:.0f}% |" if phrases else ""
        rows.append(f"| {method.name} | {len(per_seed)} | {mean['words']:.1f} | {100 * mean['looping']:.0f}% |{phrase_cell} {loss} | "
                    + " | ".join(f"{mean[m]:.2f}" for m in metrics) + " |")
    refs = (" Stock phrases counted: " + "; ".join(f"'{p}'" for p in phrases) + ".") if phrases else ""
    phrase_head = " outputs holding a stock phrase |" if phrases else ""
    table = (f"| method | seeds | mean words | outputs repeating a 4-gram |{phrase_head} held-out loss | " + " | ".join(metrics) + " |\n"
             + "|---" * (5 + bool(phrases) + len(metrics)) + "|\n" + "\n".join(rows))
    intro = (f"# Output length and loops: {args.task} · {bb}\n\nMeans over each method's finished seeds (cells made with the "
             f"config's current settings), {args.config}.{refs} Held-out loss is per target token over the whole "
             "vocabulary, except for top-k plugins (their support plus a rest bucket: not on the same scale).")
    save(f"loops-{args.task}", data, intro, table)


if __name__ == "__main__":
    main()

"""Averaging the recipe's trained candidates instead of keeping one: does it write better test text, and
would held-out text have known when?

`plugin-ensemble` cells (scoreboard.yaml) decode test through ``LogitSum``: the reweighter the default
recipe keeps and every other candidate trained behind its prompt and support, their logits averaged at
the strengths they chose. Each cell records the sum's held-out scores beside each member's (the
strength choice's inputs and metrics), so this reads the cells, no decoding: per task and seed the
plugin's test text, the sum's, and what a choice would keep that takes the sum only where its held-out
mix (each metric over the best of members and sum, averaged, as ``selection.choose_plugin``) beats the
kept member's by more than ``--margin``.

The kept candidate's test text is the `--kept` variant's cell (`plugin-kept`: the recipe with `ensemble: false`)
or, where that seed has none, the `plugin` cell when it decoded the kept candidate alone (no tie to average).

    python benchmarks/ensemble_choice.py benchmarks/scoreboard.yaml
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

SHOWN = ["BLEU", "METEOR", "ROUGE-L", "CIDEr"]


def mixes(scores: list[dict[str, float]]) -> list[float]:
    """Each score set's mean, over the metrics all share, of its value over the best one's.

    >>> [round(m, 3) for m in mixes([{"BLEU": 10.0, "CIDEr": 1.0}, {"BLEU": 5.0, "CIDEr": 1.0}])]
    [1.0, 0.75]
    """
    metrics = [m for m in scores[0] if all(m in s for s in scores) and max(s[m] for s in scores) > 0]
    if not metrics:
        return [1.0] * len(scores)
    best = {m: max(s[m] for s in scores) for m in metrics}
    return [statistics.fmean(s[m] / best[m] for m in metrics) for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--ensemble", default="plugin-ensemble")
    ap.add_argument("--kept", default="plugin-kept", help="the variant that decodes the kept candidate alone")
    ap.add_argument("--plugin", default="plugin", help="where --kept has no cell: the default's, if it averaged nothing")
    ap.add_argument("--against", default="icl-3")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--out", default="ensemble-choice")
    args = ap.parse_args()
    cfg = load_config(args.config)
    by_name = {m.name: m for m in cfg.methods}
    fmt = lambda s: " / ".join(f"{s[m]:.2f}" for m in SHOWN)  # noqa: E731
    lines, data = [], []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            ens = finished_cells(cfg, task, bb, by_name[args.ensemble])
            plug = {s: c for s, c in finished_cells(cfg, task, bb, by_name[args.plugin]).items()
                    if "ensemble" not in c["info"]}  # the kept candidate alone
            if args.kept in by_name:
                plug.update(finished_cells(cfg, task, bb, by_name[args.kept]))
            other = finished_cells(cfg, task, bb, by_name[args.against]) if args.against in by_name else {}
            seeds = sorted(s for s in ens if s in plug)
            if not seeds:
                continue
            lines += [f"## {task} · {bb}", "",
                      f"| seed | members | held-out mix: kept / sum | test: kept | test: sum | test: chosen "
                      f"(margin {args.margin:g}) | test: {args.against} |", "|---|---|---|---|---|---|---|"]
            rows: dict[str, list[dict[str, float]]] = {"kept": [], "sum": [], "chosen": [], args.against: []}
            for seed in seeds:
                info = ens[seed]["info"]["ensemble"]
                kept = ens[seed]["info"]["artifact"]
                at = info["members"].index(kept)
                mix = mixes([*info["members_held_out"], info["held_out"]])
                take_sum = len(info["members"]) > 1 and mix[-1] > mix[at] + args.margin
                test = {"kept": plug[seed]["scores"], "sum": ens[seed]["scores"]}
                test["chosen"] = test["sum"] if take_sum else test["kept"]
                against = other.get(seed) or other.get(None)
                if against:
                    test[args.against] = against["scores"]
                for name, scores in test.items():
                    rows[name].append(scores)
                lines.append(f"| {seed} | {len(info['members'])} | {mix[at]:.3f} / {mix[-1]:.3f} | {fmt(test['kept'])} | "
                             f"{fmt(test['sum'])} | {'sum' if take_sum else 'kept'}: {fmt(test['chosen'])} | "
                             f"{fmt(test[args.against]) if args.against in test else '-'} |")
                data.append({"task": task, "blackbox": bb, "seed": seed, "members": info["members"],
                             "weights": info["weights"], "held_out_mix": {"kept": mix[at], "sum": mix[-1]},
                             "takes_sum": take_sum, "test": test})
            lines += ["", f"| means over seeds {seeds} | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
            for name, got in rows.items():
                if len(got) == len(seeds):
                    lines.append(f"| {name} | " + " | ".join(f"{statistics.fmean(s[m] for s in got):.2f}" for m in SHOWN) + " |")
            lines.append("")
    intro = ("# Averaging the recipe's candidates\n\n"
             f"`{args.ensemble}` cells of `{args.config}`: test decoded through the kept reweighter and every other "
             "candidate behind its prompt and support, logits averaged at their chosen strengths (`LogitSum`). "
             "Test scores as BLEU / METEOR / ROUGE-L / CIDEr on the same 300 inputs; held-out mixes on the strength "
             "choice's inputs (each metric over the best of the members and the sum, averaged).")
    save(args.out, data, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

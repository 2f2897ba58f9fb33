"""Recipe variants beside the default plugin on the same data cut: what validation saw (held-out
loss, the greedy text at the chosen strength) next to what test measured. Reads the finished
cells of a variants config and of a baseline config (e.g. the scoreboard) whose data settings
match, so a variant is only ever judged against the same seed's training rows, validation and
test inputs. A variant worth adopting leads on validation (where it would be chosen), not just on
test. Writes benchmarks/results/NAME.{json,md} (NAME: the variants config's name).

    python benchmarks/variants.py benchmarks/webnlg-ablations.yaml --baseline benchmarks/scoreboard.yaml
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import METRICS, finished_cells, save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label  # noqa: E402

TEXT = [m for m in METRICS if m != "SER"]  # what the strength choice scores on validation


def validation_at_chosen(cell: dict, strength: float | None = None) -> dict[str, float]:
    """The held-out greedy text's scores at the strength the cell decoded with (or ``strength``)."""
    info = cell["info"]
    scores = (info.get("strength_selection") or {}).get("scores") or {}
    got = scores.get(f"{info['strength'] if strength is None else strength:g}", {})
    return got if isinstance(got, dict) else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="the variants' bench config")
    ap.add_argument("--baseline", type=Path, required=True, help="a config with the same data settings")
    ap.add_argument("--plugin", default="plugin", help="the baseline's default plugin")
    ap.add_argument("--prompt", default="recipe-prompt", help="the baseline's prompt without the plugin")
    args = ap.parse_args()
    cfg, base = load_config(args.config), load_config(args.baseline)
    if cfg.data != base.data or cfg.generation != base.generation:
        sys.exit(f"{args.config} and {args.baseline} cut the data or decode differently; their cells do not compare")
    base_methods = {m.name: m for m in base.methods}
    data, lines = [], []
    for task in cfg.tasks:
        for bb in map(blackbox_label, cfg.blackboxes):
            plugin = finished_cells(base, task, bb, base_methods[args.plugin])
            prompt = finished_cells(base, task, bb, base_methods[args.prompt]) if args.prompt in base_methods else {}
            rows = []
            # the prompt alone: validation from the plugin's strength-0 decode, test from its own cell
            for seed, cell in plugin.items():
                if seed in prompt:
                    rows.append(("prompt alone (strength 0)", seed, None, None, 0.0,
                                 validation_at_chosen(cell, 0.0), prompt[seed]["scores"], prompt[seed]["wall_seconds"]))
            rows += [(f"{args.plugin} (default)", s, c["info"]["eval_loss"], c["info"].get("best_epoch"),
                      c["info"]["strength"], validation_at_chosen(c), c["scores"], c["wall_seconds"])
                     for s, c in plugin.items()]
            for method in cfg.methods:
                rows += [(method.name, s, c["info"].get("eval_loss"), c["info"].get("best_epoch"),
                          c["info"].get("strength"), validation_at_chosen(c), c["scores"], c["wall_seconds"])
                         for s, c in finished_cells(cfg, task, bb, method).items()]
            if not rows:
                continue
            lines += [f"## {task} · {bb}", "",
                      "| method | seed | held-out loss | epoch | strength | "
                      + " | ".join(f"val {m}" for m in TEXT) + " | " + " | ".join(f"test {m}" for m in TEXT)
                      + " | wall s |", "|---|---|---|---|---|" + "---|" * (2 * len(TEXT) + 1)]
            for name, seed, loss, epoch, strength, val, test, wall in rows:
                lines.append(f"| {name} | {seed} | {'' if loss is None else f'{loss:.4f}'} | "
                             f"{'' if epoch is None else epoch} | {'' if strength is None else f'{strength:g}'} | "
                             + " | ".join(f"{val[m]:.2f}" if m in val else "" for m in TEXT) + " | "
                             + " | ".join(f"{test[m]:.2f}" if m in test else "" for m in TEXT) + f" | {wall:.0f} |")
                data.append({"task": task, "blackbox": bb, "method": name, "seed": seed, "eval_loss": loss,
                             "best_epoch": epoch, "strength": strength, "validation": val, "test": test,
                             "wall_seconds": wall})
            by_method: dict[str, list] = {}
            for row in rows:
                by_method.setdefault(row[0], []).append(row)
            if any(len(r) > 1 for r in by_method.values()):
                lines += ["", "Means over each method's seeds:", "",
                          "| method | seeds | " + " | ".join(f"val {m}" for m in TEXT) + " | "
                          + " | ".join(f"test {m}" for m in TEXT) + " |", "|---|---|" + "---|" * (2 * len(TEXT))]
                for name, rs in by_method.items():
                    def mean(i: int, m: str) -> str:
                        got = [r[i][m] for r in rs if m in r[i]]
                        return f"{statistics.fmean(got):.2f}" if got else ""
                    lines.append(f"| {name} | {sorted(r[1] for r in rs)} | " + " | ".join(mean(5, m) for m in TEXT)
                                 + " | " + " | ".join(mean(6, m) for m in TEXT) + " |")
            lines.append("")
    intro = (f"# {cfg.name}: recipe variants beside the default plugin\n\n"
             f"Variants from `{args.config}`, the default plugin and its prompt alone from `{args.baseline}` "
             f"(same data settings: {cfg.data}). `val` columns: the held-out greedy text (100 inputs, half renamed) "
             "at the strength the cell decoded with, i.e. what chose it; `test`: the 300 test inputs. A variant "
             "is only worth adopting when it leads on validation.")
    save(cfg.name, data, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

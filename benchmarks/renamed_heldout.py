"""Does the held-out text behind the plugin choices see what test sees for names the plugin never
learned? Each plugin cell's kept plugin decodes the held-out inputs (the bench's choice pool, the
first ``select_inputs``) three ways: as they are, with every copied name replaced by a pseudo-name
made of the syllables training's copy augmentation uses (``select_renamed_syllables: training``, the
renamed choice's names until session 22), and by one made of other syllables (tokens the reweighter
never had as targets, as a test split's new names are; ``held-out``, the default since). Each is
scored at the strength the cell decodes test with, beside the cell's test score.

Session 21 found the question: on E2E a whole-vocabulary plugin at black-box weight 0.5 matched the
default plugin's held-out text (metric mix 0.978 vs 0.976) and lost 11 BLEU on test, writing "a
coffee shop called the city centre" for "Blue Spice". Writes benchmarks/results/renamed-heldout-TASK.{json,md}.

    python benchmarks/renamed_heldout.py benchmarks/scoreboard.yaml --task e2e --seed 0 \
        --methods plugin,plugin-dense-bbw0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import save  # noqa: E402

from logitplug.bench import load_config  # noqa: E402
from logitplug.bench.runner import blackbox_label, cell_path, prepare_task  # noqa: E402

METRICS = ["BLEU", "METEOR", "ROUGE-L", "CIDEr"]
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", required=True, help="comma-separated plugin methods with finished cells")
    ap.add_argument("--inputs", type=int, default=100, help="held-out inputs decoded (the recipe's select_inputs)")
    args = ap.parse_args()

    from logitplug.blackbox import load_blackbox
    from logitplug.data import PromptTemplate
    from logitplug.decode import GenerationConfig
    from logitplug.reweighter import Reweighter, read_sidecar
    from logitplug.selection import text_metrics_scorer
    from logitplug.train import trained_rule

    cfg = load_config(args.config)
    data = prepare_task(cfg, args.task)
    held_out = data.choice_pool or data.validation
    gen = GenerationConfig(**cfg.generation_for(args.task))
    rows, lines = [], []
    for bb_name in cfg.blackboxes:
        bb = load_blackbox(bb_name)
        for method in args.methods.split(","):
            cell = json.loads(cell_path(cfg, args.task, blackbox_label(bb_name), method, args.seed).read_text())
            folder = Path(cell["info"]["artifact"])
            sidecar = read_sidecar(folder)
            template = PromptTemplate(**sidecar["template"])
            rule = trained_rule(folder, bb.tokenizer.eos_token_id)
            plugin = Reweighter.from_pretrained(folder, bb.fingerprint)
            row = {"method": method, "blackbox": blackbox_label(bb_name), "rule": rule.signature(),
                   "test": {m: cell["scores"][m] for m in METRICS}}
            for label, renamed, syllables in (("as they are", 0.0, "held-out"), ("training's pseudo-names", 1.0, "training"),
                                              ("other pseudo-names", 1.0, "held-out")):
                scorer = text_metrics_scorer(bb, template, held_out, METRICS, rule, gen, args.inputs, renamed, args.seed,
                                             syllables)
                row[label] = scorer(plugin)
                print(method, label, {m: round(v, 2) for m, v in row[label].items()}, flush=True)
            rows.append(row)
    header = "| method | rule | " + " | ".join(("held-out as they are", "all renamed, training's syllables",
                                                "all renamed, other syllables", "test")) + " |"
    lines = [header, "|" + "---|" * 6]
    for r in rows:
        cells = [" / ".join(f"{r[k][m]:.2f}" for m in METRICS)
                 for k in ("as they are", "training's pseudo-names", "other pseudo-names", "test")]
        rule = r["rule"].replace("|", "\\|")  # a table cell
        lines.append(f"| {r['method']} | `{rule}` | " + " | ".join(cells) + " |")
    intro = (f"# Held-out text with renamed inputs: {args.task}, seed {args.seed}\n\n"
             f"BLEU / METEOR / ROUGE-L / CIDEr of each cell's kept plugin on the first {args.inputs} held-out inputs "
             "(as they are; every copied name renamed with the syllables training's augmentation uses; renamed with "
             "other syllables), at the strength it decodes test with, and its test score. See the script's docstring.")
    save(f"renamed-heldout-{args.task}", rows, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

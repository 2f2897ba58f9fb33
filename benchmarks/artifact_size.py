"""Size of a token-vector plugin folder, and its load time, with the table by reference vs stored.

Until session 16 a plugin on the black box's pretrained token vectors carried the whole frozen
table in its weights file; now the folder records the table's source and sha256 and reads it again
when loaded. This builds such a reweighter (the default recipe's shape) for each black box given,
saves it both ways (the stored way: the table added to the weights file, as older plugins held it,
which still load) and measures folder bytes and load seconds, side by side in one run.

    python benchmarks/artifact_size.py smollm2-135m gemma3-270m

Writes benchmarks/results/artifact-size.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from _results import save
from logitplug import Reweighter, ReweighterConfig
from logitplug.blackbox.registry import load_tokenizer
from logitplug.recipes import get_recipe
from logitplug.reweighter.model import WEIGHTS_NAME, TokenVectors


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def timed_load(path: Path, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        Reweighter.from_pretrained(path)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("blackboxes", nargs="+", help="registered black-box names (or model folders)")
    ap.add_argument("--repeats", type=int, default=3, help="loads per folder; the fastest is reported")
    args = ap.parse_args()
    rows = []
    for name in args.blackboxes:
        tokenizer = load_tokenizer(name)
        rcfg = ReweighterConfig(**{**get_recipe("logitplug").reweighter, "token_vectors_from": name})
        rw = Reweighter.build(rcfg, len(tokenizer), tokenizer)
        with tempfile.TemporaryDirectory() as tmp:
            by_reference = rw.save_pretrained(Path(tmp) / "by-reference", "size-probe")
            stored = rw.save_pretrained(Path(tmp) / "stored", "size-probe")
            state = load_file(str(stored / WEIGHTS_NAME))
            state[TokenVectors.TABLE_KEY] = rw.lm.get_input_embeddings().table
            save_file(state, str(stored / WEIGHTS_NAME), metadata={"format": "pt"})
            ids = torch.randint(0, len(tokenizer), (1, 12))
            mask = torch.ones_like(ids)
            same = all(torch.equal(Reweighter.from_pretrained(p)(ids, mask), rw(ids, mask)) for p in (by_reference, stored))
            row = {"blackbox": name, "vocabulary": len(tokenizer), "table_dim": int(rw.lm.get_input_embeddings().table.shape[1]),
                   "stored_mb": folder_bytes(stored) / 2**20, "by_reference_mb": folder_bytes(by_reference) / 2**20,
                   "stored_load_s": timed_load(stored, args.repeats),
                   "by_reference_load_s": timed_load(by_reference, args.repeats), "same_logits": same}
        row["size_ratio"] = row["stored_mb"] / row["by_reference_mb"]
        rows.append(row)
    lines = ["| black box | vocabulary x dim | folder, table stored | folder, by reference | ratio | load, stored | load, by reference | same logits |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['blackbox']} | {r['vocabulary']:,} x {r['table_dim']} | {r['stored_mb']:.1f} MB | "
                     f"{r['by_reference_mb']:.1f} MB | {r['size_ratio']:.1f}x | {r['stored_load_s']:.2f} s | "
                     f"{r['by_reference_load_s']:.2f} s | {r['same_logits']} |")
    intro = ("# Token-vector plugin folders: the frozen table stored vs by reference\n\n"
             "A freshly built reweighter of the default recipe's shape on the black box's own token vectors, saved "
             "both ways in one run; load time is the fastest of the repeats (by reference it reads the source model "
             "again and checks the table's sha256).")
    save("artifact-size", rows, intro, "\n".join(lines))


if __name__ == "__main__":
    main()

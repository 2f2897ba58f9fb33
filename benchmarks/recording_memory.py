"""Peak memory of recording the black box's log-probs into the cache, with glibc told to keep freed
memory in the process (what training's inner loop wants) and without (what ``train`` now does
while it records).

Recording goes longest row last, so each batch's (positions x vocabulary) tensors are a little
larger than the holes the previous batch left; a heap that keeps freed memory then only grows.
With Gemma's 262k vocabulary that took a bench cell to ~20 GB. Each setting runs in a fresh child
process (peak RSS is per process); the rows, prompt and batch size are the default recipe's on E2E.

    python benchmarks/recording_memory.py --blackbox gemma3-270m --rows 300   # BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _child(keep: bool, args: dict, queue) -> None:
    import importlib

    from logitplug.blackbox import load_blackbox
    from logitplug.cache import LogProbCache
    from logitplug.data import TEMPLATES, draw_demonstrations, e2e_paper_splits, encode_all

    train_module = importlib.import_module("logitplug.train")  # the package re-exports a function named train
    bb = load_blackbox(args["blackbox"])
    rows = e2e_paper_splits(args.get("data_dir"))["train"]
    demos, rows = draw_demonstrations(rows, 1, 0)  # the count the default recipe picks on E2E
    enc = encode_all(bb.tokenizer, TEMPLATES["e2e"].with_demonstrations(demos), rows[: args["rows"]], 1024)
    train_module.keep_freed_memory_in_process(keep)
    with tempfile.TemporaryDirectory() as tmp:
        source = train_module._LogProbSource(bb, LogProbCache(tmp, bb.fingerprint, bb.vocab_size, 256))
        t0 = time.perf_counter()
        source.record(enc, 8, 0, 1, False)
        seconds = time.perf_counter() - t0
    status = Path("/proc/self/status").read_text().splitlines()
    peak = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))
    queue.put({"peak_rss_mib": round(peak), "seconds": round(seconds, 1)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blackbox", default="gemma3-270m")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--data-dir", default=None)
    args = vars(ap.parse_args())
    ctx = mp.get_context("spawn")
    results = {}
    for keep in (True, False):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(keep, args, queue))
        proc.start()
        proc.join()
        if queue.empty():
            raise SystemExit(f"the child recording with keep={keep} died (exit code {proc.exitcode})")
        results["kept" if keep else "returned"] = queue.get()
        print(f"freed memory {'kept' if keep else 'returned'}: {results['kept' if keep else 'returned']}", flush=True)
    report = {"command": f"python benchmarks/recording_memory.py --blackbox {args['blackbox']} --rows {args['rows']}",
              "blackbox": args["blackbox"], "rows": args["rows"], "machine": platform.machine(),
              "results": results,
              "peak_ratio_kept_over_returned": round(results["kept"]["peak_rss_mib"] / results["returned"]["peak_rss_mib"], 2)}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"recording-memory-{args['blackbox']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Peak memory of recording the log-prob cache ({args['blackbox']}, {args['rows']} E2E rows)", "",
             f"Command: `{report['command']}`", "",
             "| glibc told to | peak RSS (MiB) | seconds |", "|---|---|---|"]
    for name, r in results.items():
        label = "keep freed memory (training loop's setting)" if name == "kept" else "return big blocks (while recording, now)"
        lines.append(f"| {label} | {r['peak_rss_mib']:,} | {r['seconds']} |")
    lines += ["", f"Peak ratio kept / returned: {report['peak_ratio_kept_over_returned']}x (one run; seconds are "
              "from two processes run one after the other on a shared machine)."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

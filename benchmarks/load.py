"""Bounded load test of `logitplug serve` on loopback: N concurrent clients, a fixed request count.

Starts the server as a separate process (as a user would), waits for /health, then runs
``--clients`` threads that each send ``--requests`` completions (E2E test prompts, greedy,
``--max-tokens`` new tokens, top-5 log-probs) with the official openai client. Reports errors,
latency percentiles and throughput; writes benchmarks/results/load.{json,md}.

    python benchmarks/load.py --clients 4 --requests 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

from logitplug.data import TEMPLATES, e2e_paper_splits

RESULTS = Path(__file__).parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blackbox", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=10, help="per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args()

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "logitplug.cli", "serve", "--blackbox", args.blackbox,
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("server did not start: " + server.stderr.read().decode()[-2000:])
        inputs = [ex.input for ex in e2e_paper_splits(seed=0)["test"]]
        prompts = [TEMPLATES["e2e"].render(x) for x in inputs[: args.clients * args.requests]]
        latencies: list[float] = []
        errors: list[str] = []
        tokens = [0]
        lock = threading.Lock()

        def client_run(c: int) -> None:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
            for r in range(args.requests):
                t0 = time.perf_counter()
                try:
                    out = client.completions.create(model=args.blackbox, prompt=prompts[c * args.requests + r],
                                                    max_tokens=args.max_tokens, temperature=0, logprobs=5)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        tokens[0] += out.usage.completion_tokens
                except Exception as e:  # noqa: BLE001 -- every failure is counted and reported
                    with lock:
                        errors.append(repr(e)[:200])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_run, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)

    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [latencies[0]] * 99
    report = {
        "command": "python benchmarks/load.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "clients": args.clients, "requests": args.clients * args.requests, "errors": len(errors),
        "error_samples": errors[:5], "wall_seconds": wall,
        "latency_s": {"p50": q[49], "p90": q[89], "p99": q[98], "max": max(latencies)},
        "throughput_req_s": len(latencies) / wall, "throughput_tok_s": tokens[0] / wall,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(report, indent=2))
    md = (f"Command: `{report['command']}`\n\n| clients | requests | errors | p50 s | p90 s | p99 s | max s | req/s | new tok/s |\n"
          f"|---|---|---|---|---|---|---|---|---|\n| {args.clients} | {report['requests']} | {report['errors']} | "
          f"{q[49]:.2f} | {q[89]:.2f} | {q[98]:.2f} | {max(latencies):.2f} | {report['throughput_req_s']:.2f} | "
          f"{report['throughput_tok_s']:.1f} |\n")
    (RESULTS / "load.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

"""Server benchmark against the raw engine, in one run and one process tree.

`python -m onnx_server.bench [--size small|large | --model DIR]`: equal requests in waves. The raw
onnxruntime-genai loop in-process (one stream, then static batches of N, the fastest raw way to serve
N concurrent requests on CPU) and this server over HTTP at concurrency 1, 4 and 16.

`python -m onnx_server.bench --realistic [--clients 16] [--rate auto|R] [--json OUT]`: mixed lengths
as vLLM's serving benchmark does (loadgen.py): the raw engine's single stream, the server's engine
in-process without HTTP (inprocess.py) and the server's one client in turn, the raw static batch of
N equal requests, the server with N closed-loop clients and an open loop of Poisson arrivals; TTFT,
inter-token and end-to-end percentiles, every error, the ratios to the raw engine and issue 15's
targets.

Without --model it uses a random int4 Phi3 (benchmodels.py), built once into --cache.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from onnx_server.benchmodels import CACHE, SIZES, build
from onnx_server.benchreport import OPEN_LOOP_SHARE, Results, table, target_lines, to_json
from onnx_server.benchstats import Summary, summarize
from onnx_server.cpus import available_cpus
from onnx_server.inprocess import InProcessEngine
from onnx_server.loadgen import (
    MAX_TOKENS,
    PROMPT_WORDS,
    BenchRequest,
    LoadRun,
    Outcome,
    client,
    closed_loop,
    equal_requests,
    open_loop,
    poisson_arrivals,
    served_model,
    stream,
    workload,
)
from onnx_server.rawengine import RawEngine

KEY = "bench-key"


@dataclass
class Run:
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    failed: int = 0  # requests that did not complete

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def prompts(count: int) -> list[str]:
    return [f"request {i}: the quick brown fox serves small language models on kubernetes" for i in range(count)]


def raw_run(model_dir: Path, texts: list[str], new_tokens: int, batch: int) -> Run:
    """Static batches of `batch` prompts through the Generator loop (batch 1: one stream at a time)."""
    requests = [BenchRequest(t, new_tokens) for t in texts]
    return _as_run(RawEngine(model_dir).static_batches(requests, batch))


def _as_run(load: LoadRun) -> Run:
    return Run(
        tokens=sum(o.tokens for o in load.outcomes),
        seconds=load.seconds,
        ttft=[o.ttft for o in load.outcomes if o.ttft is not None],
        itl=[gap for o in load.outcomes for gap in o.itl],
        failed=sum(o.error is not None for o in load.outcomes),
    )


async def server_run(base: str, texts: list[str], new_tokens: int, concurrency: int) -> Run:
    requests = [BenchRequest(t, new_tokens) for t in texts]
    return _as_run(await closed_loop(base, "bench", KEY, requests, concurrency))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model_dir: Path, log: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "ONNX_SERVER_API_KEYS": KEY, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "onnx_server", "--model", str(model_dir), "--port", str(port)]
    with log.open("w") if log else open(os.devnull, "w") as stderr:  # noqa: PTH123 (the child keeps its copy)
        process = subprocess.Popen(
            [*command, "--served-model-name", "bench"], env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}" + (f"; its log: {log}" if log else ""))
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready")


def waves(model_dir: Path, requests: int, new_tokens: int) -> None:
    """Equal requests sent in waves at concurrency 1, 4 and 16 (the first benchmark)."""
    texts = prompts(requests)
    rows = []
    for concurrency in (1, 4, 16):
        raw = raw_run(model_dir, texts, new_tokens, concurrency)
        rows.append(("raw", concurrency, raw))
    process, base = start_server(model_dir)
    try:
        for concurrency in (1, 4, 16):
            rows.append(("server", concurrency, asyncio.run(server_run(base, texts, new_tokens, concurrency))))
    finally:
        process.terminate()
        process.wait(60)
    print(f"model {model_dir}, {requests} requests x {new_tokens} new tokens, {available_cpus()} CPUs")
    print(f"{'':7} {'conc':>4} {'tok/s':>8} {'TTFT p50':>9} {'p95 ms':>7} {'ITL p50':>8} {'p95 ms':>7} {'failed':>6}")
    for name, concurrency, run in rows:
        print(
            f"{name:7} {concurrency:4d} {run.rate:8.1f} {_pct(run.ttft, 50):9.1f} {_pct(run.ttft, 95):7.1f} "
            f"{_pct(run.itl, 50):8.2f} {_pct(run.itl, 95):7.2f} {run.failed:6d}"
        )
    raw_rates = {c: r.rate for n, c, r in rows if n == "raw"}
    for _, concurrency, run in (r for r in rows if r[0] == "server"):
        print(f"server/raw at concurrency {concurrency}: {run.rate / raw_rates[concurrency]:.2f}")


def realistic(
    model_dir: Path,
    base: str,
    key: str,
    requests: list[BenchRequest],
    *,
    clients: int = 16,
    rate: float | None = None,
    seed: int = 0,
) -> Results:
    """The raw engine in this process and the server at `base` (already running) under the same
    requests: the raw single stream, the server's engine in this process (no HTTP) and the server's
    1 client in turn; half the raw static batches, `clients` closed-loop clients, the other half;
    then an open loop at `rate` requests/s (None: 70% of the closed loop's measured capacity).
    Neither side computes while the other is measured."""
    raw = RawEngine(model_dir)
    raw.batch([requests[0].prompt], 4)  # first-run costs (allocations, thread pool start) are not measured
    model = served_model(base, key)
    asyncio.run(closed_loop(base, model, key, [BenchRequest("warm up", 4)], 1))
    _progress(f"{len(requests)} requests one at a time: raw engine, engine in-process, server (1 client) in turn")
    engine = InProcessEngine(model_dir)
    try:
        raw_single, engine_single, one_client = asyncio.run(
            _in_turn(raw, engine, base=base, model=model, key=key, requests=requests)
        )
    finally:
        engine.close()  # its session's threads and memory, before the batches
    del engine
    gc.collect()
    # The raw batches' halves come before and after the closed loop, so a machine that drifts
    # faster or slower during the run weighs on both sides alike (the one-client runs take turns).
    batches = math.ceil(len(requests) / clients)
    equal = equal_requests(requests, clients * batches, seed)
    first_half = math.ceil(batches / 2)
    split = clients * first_half
    _progress(f"raw engine: static batches of {clients}, the first {first_half} of {batches}")
    before = raw.static_batches(equal[:split], clients)

    auto_rate = rate is None
    _progress(f"server: {clients} closed-loop clients")
    closed = summarize(asyncio.run(closed_loop(base, model, key, requests, clients)))
    _progress(f"raw engine: static batches of {clients}, the other {batches - first_half}")
    after = raw.static_batches(equal[split:], clients)
    raw_batch = summarize(LoadRun(before.outcomes + after.outcomes, before.seconds + after.seconds))
    halves = (summarize(before).tokens_per_s, summarize(after).tokens_per_s if after.outcomes else math.nan)
    del raw  # its weights, before the open loop
    gc.collect()

    if rate is None:
        if not closed.completed:
            raise RuntimeError(f"the {clients}-client closed loop completed no request: {closed.errors}")
        rate = OPEN_LOOP_SHARE * closed.requests_per_s
    arrivals = poisson_arrivals(rate, len(requests), seed)
    _progress(f"server: open loop, Poisson arrivals at {rate:.2f} requests/s")
    opened = summarize(asyncio.run(open_loop(base, model, key, requests, arrivals)))
    return Results(
        raw_single,
        raw_batch,
        engine_single,
        one_client,
        closed,
        opened,
        clients,
        rate,
        rate_is_auto=auto_rate,
        raw_batch_halves=halves,
    )


async def _in_turn(
    raw: RawEngine, engine: InProcessEngine, *, base: str, model: str, key: str, requests: list[BenchRequest]
) -> tuple[Summary, Summary, Summary]:
    """Each request alone through the raw engine, the server's engine in this process and the
    server over HTTP, one after another: load from other work that comes and goes on a shared
    machine weighs on all three alike."""
    raw_runs: list[LoadRun] = []
    engine_outcomes: list[Outcome] = []
    served: list[Outcome] = []
    engine_seconds = served_seconds = 0.0
    async with client(key, 1) as shared:
        for request in requests:
            raw_runs.append(raw.single_stream([request]))
            started = time.perf_counter()
            engine_outcomes.append(await engine.stream(request))
            engine_seconds += time.perf_counter() - started
            started = time.perf_counter()
            served.append(await stream(shared, base, model, request))
            served_seconds += time.perf_counter() - started
    raw_outcomes = [o for run in raw_runs for o in run.outcomes]
    raw_seconds = sum(run.seconds for run in raw_runs)
    return (
        summarize(LoadRun(raw_outcomes, raw_seconds)),
        summarize(LoadRun(engine_outcomes, engine_seconds)),
        summarize(LoadRun(served, served_seconds)),
    )


def _progress(step: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {step}", file=sys.stderr, flush=True)


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cpus_available": available_cpus(),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
    }


def _rate(value: str) -> float | None:
    if value == "auto":
        return None
    try:
        rate = float(value)
    except ValueError:
        rate = 0.0
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"--rate must be 'auto' or requests per second above 0, not {value!r}")
    return rate


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value!r}")
    return int(value)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m onnx_server.bench", description="raw onnxruntime-genai vs server")
    parser.add_argument("--realistic", action="store_true", help="mixed lengths, closed and open loop (else: waves)")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="random model to build and cache")
    parser.add_argument("--model", type=Path, help="benchmark this model folder instead of a random one")
    parser.add_argument("--cache", type=Path, default=CACHE, help=f"where random models are built (default {CACHE})")
    parser.add_argument("--requests", type=_positive, help="requests per run (default: 32 waves, 64 realistic)")
    parser.add_argument("--new-tokens", type=_positive, default=128, help="waves: tokens per request")
    parser.add_argument("--clients", type=_positive, default=16, help="realistic: closed-loop clients")
    parser.add_argument("--rate", type=_rate, default="auto", help="realistic: open-loop requests/s, or auto (70%%)")
    parser.add_argument("--seed", type=int, default=0, help="realistic: the workload and arrivals")
    parser.add_argument("--json", type=Path, help="realistic: write the results here")
    args = parser.parse_args()
    model_dir: Path = args.model or build(args.size, args.cache)
    if not args.realistic:
        waves(model_dir, args.requests or 32, args.new_tokens)
        return
    requests = workload(args.requests or 64, args.seed)
    log = Path(tempfile.gettempdir()) / f"onnx-server-bench-{os.getpid()}.log"
    context: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "model": str(model_dir),
        "size": None if args.model else asdict(SIZES[args.size]),
        "workload": {
            "requests": len(requests),
            "seed": args.seed,
            "prompt_words_uniform": PROMPT_WORDS,
            "max_tokens_log_uniform": MAX_TOKENS,
        },
    }
    process, base = start_server(model_dir, log)
    try:
        results = realistic(model_dir, base, KEY, requests, clients=args.clients, rate=args.rate, seed=args.seed)
    finally:
        process.terminate()
        process.wait(60)
    context["load_average_after"] = os.getloadavg()
    print(f"{context['date']}  {context['machine']}  load average after {context['load_average_after']}")
    print(
        f"model {model_dir}; {len(requests)} requests, seed {args.seed}: prompts {PROMPT_WORDS[0]}..{PROMPT_WORDS[1]}"
        f" words uniform, max_tokens {MAX_TOKENS[0]}..{MAX_TOKENS[1]} log-uniform; server log {log}"
    )
    print(table(results))
    print()
    print(target_lines(results))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, context), indent=2) + "\n")


if __name__ == "__main__":
    main()

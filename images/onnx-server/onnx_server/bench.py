"""Server benchmark: `python -m onnx_server.bench [--model DIR] [--new-tokens 128]`.

In one run and one process tree: the raw onnxruntime-genai generation loop in-process (one stream,
then static batches of N, the fastest raw way to serve N concurrent requests on CPU) and this server
over HTTP on the same model and prompts, at concurrency 1, 4 and 16. Prints tokens/s, TTFT and
inter-token latency (p50/p95) for each, and the server/raw ratios. Without --model it builds a random
Phi3 (hidden 512 x 8 layers) and converts it to int4 first (needs the `convert` package on the path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from onnx_server.cpus import available_cpus
from onnx_server.genai import genai

KEY = "bench-key"


@dataclass
class Run:
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def prompts(count: int) -> list[str]:
    return [f"request {i}: the quick brown fox serves small language models on kubernetes" for i in range(count)]


def raw_run(model_dir: Path, texts: list[str], new_tokens: int, batch: int) -> Run:
    """Static batches of `batch` prompts through the Generator loop (batch 1: one stream at a time)."""
    og = genai()
    config = og.Config(str(model_dir))
    threads = available_cpus()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    eos = set(json.loads((model_dir / "genai_config.json").read_text())["model"]["eos_token_id"])
    result = Run()
    started = time.perf_counter()
    for first in range(0, len(texts), batch):
        group = texts[first : first + batch]
        ids = [tokenizer.encode(t) for t in group]
        params = og.GeneratorParams(model)
        longest = max(len(i) for i in ids)
        params.set_search_options(max_length=longest + new_tokens, do_sample=False, batch_size=len(group))
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(ids[0] if len(group) == 1 else tokenizer.encode_batch(group))
        last = [t0] * len(group)
        done = [False] * len(group)
        count = [0] * len(group)
        while not all(done) and not generator.is_done():
            generator.generate_next_token()
            now = time.perf_counter()
            for index, token in enumerate(generator.get_next_tokens()):
                if done[index]:
                    continue
                if int(token) in eos:
                    done[index] = True
                    continue
                count[index] += 1
                (result.ttft if count[index] == 1 else result.itl).append(now - last[index])
                last[index] = now
                done[index] = count[index] >= new_tokens
        result.tokens += sum(count)
    result.seconds = time.perf_counter() - started
    return result


async def _stream(client: httpx.AsyncClient, base: str, text: str, new_tokens: int, result: Run) -> None:
    body = {
        "model": "bench",
        "prompt": text,
        "max_tokens": new_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    last = started
    first = True
    async with client.stream("POST", base + "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                result.tokens += event["usage"]["completion_tokens"]
            if any(c.get("text") for c in event["choices"]):
                now = time.perf_counter()
                (result.ttft if first else result.itl).append(now - (started if first else last))
                first, last = False, now


async def server_run(base: str, texts: list[str], new_tokens: int, concurrency: int) -> Run:
    result = Run()
    pending = list(texts)

    async def worker(client: httpx.AsyncClient) -> None:
        while pending:
            await _stream(client, base, pending.pop(0), new_tokens, result)

    async with httpx.AsyncClient(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        result.seconds = time.perf_counter() - started
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "ONNX_SERVER_API_KEYS": KEY, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnx_server",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--served-model-name",
            "bench",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not become ready")


def build_model(root: Path) -> Path:
    from convert.tiny_model import TinySpec, build  # noqa: PLC0415 (only without --model)

    source = build(
        root / "source", TinySpec(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1024, context=1024)
    )
    out = root / "int4"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "convert",
            "--model",
            str(source),
            "--method",
            "builder",
            "--out",
            str(out),
            "--no-compare",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m onnx_server.bench", description="raw onnxruntime-genai vs server")
    parser.add_argument("--model", type=Path, help="model folder (default: build a random Phi3 512 x 8, int4)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or build_model(Path(scratch))
        texts = prompts(args.requests)
        rows = []
        for concurrency in (1, 4, 16):
            raw = raw_run(model_dir, texts, args.new_tokens, concurrency)
            rows.append(("raw", concurrency, raw))
        process, base = start_server(model_dir)
        try:
            for concurrency in (1, 4, 16):
                rows.append(("server", concurrency, asyncio.run(server_run(base, texts, args.new_tokens, concurrency))))
        finally:
            process.terminate()
            process.wait(60)
        print(
            f"model {model_dir.name}, {args.requests} requests x {args.new_tokens} new tokens, {available_cpus()} CPUs"
        )
        print(f"{'':7} {'conc':>4} {'tok/s':>8} {'TTFT p50':>9} {'p95 ms':>7} {'ITL p50':>8} {'p95 ms':>7}")
        for name, concurrency, run in rows:
            print(
                f"{name:7} {concurrency:4d} {run.rate:8.1f} {_pct(run.ttft, 50):9.1f} {_pct(run.ttft, 95):7.1f} "
                f"{_pct(run.itl, 50):8.2f} {_pct(run.itl, 95):7.2f}"
            )
        raw_rates = {c: r.rate for n, c, r in rows if n == "raw"}
        for _, concurrency, run in (r for r in rows if r[0] == "server"):
            print(f"server/raw at concurrency {concurrency}: {run.rate / raw_rates[concurrency]:.2f}")


if __name__ == "__main__":
    main()

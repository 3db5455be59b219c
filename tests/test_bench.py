"""The ONNX server's realistic benchmark: its workload and arrivals are what the README documents,
its statistics are right, and a short run against the real server completes with every field and
counts every failure (429s from the real server, a dropped and a reset stream from a stand-in)."""

from __future__ import annotations

import asyncio
import math
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx_server.bench import realistic
from onnx_server.benchreport import table, to_json
from onnx_server.benchstats import Percentiles, summarize
from onnx_server.genai import genai
from onnx_server.loadgen import (
    CLOSED,
    MAX_TOKENS,
    PROMPT_WORDS,
    RESET,
    BenchRequest,
    LoadRun,
    Outcome,
    closed_loop,
    equal_requests,
    poisson_arrivals,
    served_model,
    workload,
)
from onnx_server.rawengine import RawEngine
from onnx_server.tokens import load_tokenizer

from tests.server_support import API_KEY, SERVER_PATH, Server

# Workload of the short run against the real server: small enough for seconds on the tiny model.
SHORT_RUN = {"count": 6, "seed": 1, "prompt_words": (4, 24), "max_tokens": (4, 16)}
RUN_NAMES = (
    "raw single stream",
    "raw static batch of 3",
    "server, 1 client",
    "server, 3 closed-loop clients",
    "engine in-process, no HTTP",
)


def test_arrivals_are_a_seeded_poisson_process() -> None:
    rate, count = 5.0, 4000
    arrivals = poisson_arrivals(rate, count, seed=7)
    gaps = np.diff([0.0, *arrivals])
    assert arrivals == poisson_arrivals(rate, count, seed=7)
    assert arrivals != poisson_arrivals(rate, count, seed=8)
    assert (gaps > 0).all()
    # Exponential gaps: mean 1/rate, standard deviation equal to the mean, P(gap < mean) = 1 - 1/e.
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)
    assert (gaps < 1 / rate).mean() == pytest.approx(1 - math.exp(-1), abs=0.03)
    # Poisson counts per second: variance equal to the mean (index of dispersion 1).
    per_second = np.bincount(np.floor(arrivals).astype(int))[:-1]
    assert per_second.mean() == pytest.approx(rate, rel=0.05)
    assert per_second.var() / per_second.mean() == pytest.approx(1.0, abs=0.2)


def test_workload_lengths_are_as_documented() -> None:
    assert (PROMPT_WORDS, MAX_TOKENS) == ((16, 160), (16, 256))
    requests = workload(4000, seed=3)
    assert requests == workload(4000, seed=3) and requests != workload(4000, seed=4)
    words = np.array([len(r.prompt.split()) - 2 for r in requests])  # after "request {i}:"
    budgets = np.array([r.max_tokens for r in requests])
    # Prompt words uniform over 16..160: both ends reached, mean 88, a quarter below 52.
    assert (words.min(), words.max()) == (16, 160)
    assert words.mean() == pytest.approx(88, rel=0.03)
    assert (words < 52).mean() == pytest.approx(0.25, abs=0.03)
    # max_tokens log-uniform over 16..256: the log's quartiles at 32, 64 and 128.
    assert (budgets.min(), budgets.max()) == (16, 256)
    for quartile, bound in ((0.25, 32), (0.5, 64), (0.75, 128)):
        assert (budgets < bound).mean() == pytest.approx(quartile, abs=0.03)
    assert len({r.prompt for r in requests}) == len(requests)


def test_the_raw_static_batch_gets_prompts_as_long_in_tokens_as_the_workloads(tiny_source: Path) -> None:
    """The raw baseline's equal requests must cost what the workload's do: prompt tokens are half
    the compute. Counted with the real tokenizer (the tiny model's, trained like the bench
    models'), where a prompt's "request {i}:" takes several tokens."""
    tokenizer = load_tokenizer(tiny_source)
    requests = workload(128, seed=0)
    equal = equal_requests(requests, 128, seed=0)

    def mean_tokens(batch: list[BenchRequest]) -> float:
        return float(np.mean([len(tokenizer.encode(r.prompt).ids) for r in batch]))

    assert mean_tokens(equal) == pytest.approx(mean_tokens(requests), rel=0.02)
    assert {r.max_tokens for r in equal} == {round(np.mean([r.max_tokens for r in requests]))}
    assert len({r.prompt for r in equal}) == len(equal)


def test_percentiles_interpolate_between_ranks() -> None:
    # numpy's linear method by hand: p = q/100 x (n - 1) as a fractional rank.
    four = Percentiles.of([0.4, 0.1, 0.3, 0.2])
    assert (four.p50, four.p95, four.p99) == pytest.approx((0.25, 0.385, 0.397))
    hundred = Percentiles.of([float(v) for v in range(1, 101)])
    assert (hundred.p50, hundred.p95, hundred.p99) == pytest.approx((50.5, 95.05, 99.01))
    assert all(math.isnan(p) for p in (Percentiles.of([]).p50, Percentiles.of([]).p99))


def test_summary_counts_failures_by_kind_and_resets_apart() -> None:
    done = [Outcome(ttft=0.1, itl=[0.01, 0.03], e2e=0.2, tokens=3), Outcome(ttft=0.3, itl=[0.02], e2e=0.5, tokens=2)]
    failed = [Outcome(error="HTTP 429"), Outcome(error="HTTP 429"), Outcome(ttft=0.2, tokens=1, error=RESET)]
    summary = summarize(LoadRun([*done, *failed, Outcome(error=CLOSED)], seconds=2.0))
    assert (summary.requests, summary.completed, summary.resets, summary.timed) == (6, 2, 2, 3)
    assert summary.errors == {"HTTP 429": 2, RESET: 1, CLOSED: 1}
    assert (summary.tokens, summary.tokens_per_s, summary.requests_per_s) == (6, 3.0, 1.0)
    assert summary.e2e.p50 == pytest.approx(0.35)
    assert summary.ttft.p50 == pytest.approx(0.2)  # the reset request's first token counts
    assert summary.itl.p50 == pytest.approx(0.02)


def test_the_raw_engine_times_a_token_when_it_adds_text(endless_model: Path) -> None:
    """The raw engine's TTFT and gaps count what the server's client counts, streamed text: a token
    that decodes to nothing arrives with the next one, and a stream with no text has no TTFT.
    Expected texts come from onnxruntime-genai's own greedy loop and tokenizer stream."""
    og = genai()
    model = og.Model(str(endless_model))
    tokenizer = og.Tokenizer(model)
    raw = RawEngine(endless_model)
    silent = 0
    for request in workload(count=12, seed=1, prompt_words=(4, 24), max_tokens=(16, 16)):
        ids = tokenizer.encode(request.prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + request.max_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        text = tokenizer.create_stream()
        arrivals = 0
        while not generator.is_done():
            generator.generate_next_token()
            arrivals += bool(text.decode(int(generator.get_next_tokens()[0])))
        (outcome,) = raw.batch([request.prompt], request.max_tokens)
        assert outcome.tokens == request.max_tokens
        assert (outcome.ttft is not None, len(outcome.itl)) == (arrivals > 0, max(arrivals - 1, 0)), request
        silent += arrivals < request.max_tokens
    # The random model's greedy output has tokens that decode to nothing (else this proves little).
    assert silent, "every token of every request decoded to text"


def test_a_short_realistic_run_completes_with_every_field(
    endless_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real server and the raw engine on the tiny model that never stops early, so every run
    must produce exactly the tokens its requests asked for."""
    requests = workload(**SHORT_RUN)  # pyright: ignore[reportArgumentType]
    asked = sum(r.max_tokens for r in requests)
    server = Server(endless_model)
    try:
        results = realistic(endless_model, server.base, API_KEY, requests, clients=3)
    finally:
        server.stop()
    report = to_json(results, {"model": str(endless_model)})
    # The raw batches' halves bracket the closed loop, so drift during the run weighs on both.
    steps = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert steps.index("raw engine: static batches of 3, the first 1 of 2") + 1 == steps.index(
        "server: 3 closed-loop clients"
    )
    assert steps.index("server: 3 closed-loop clients") + 1 == steps.index(
        "raw engine: static batches of 3, the other 1"
    )
    first, second = report["raw_batch_tokens_per_s_before_and_after_the_closed_loop"]
    assert 0 < min(first, second) <= report["runs"]["raw static batch of 3"]["tokens_per_s"] <= max(first, second)
    assert "tok/s of its half before the closed loop" in table(results)
    runs = report["runs"]
    open_name = f"server, open loop {results.rate:.2f} req/s"
    assert set(runs) == {*RUN_NAMES, open_name}
    assert results.rate_is_auto and results.rate == pytest.approx(
        0.7 * runs["server, 3 closed-loop clients"]["requests_per_s"]
    )
    for name, run in runs.items():
        assert (run["requests"], run["completed"], run["errors"], run["resets"]) == (6, 6, {}, 0), name
        assert run["tokens_per_s"] > 0 and run["requests_per_s"] > 0, name
        for metric in ("ttft", "itl", "e2e"):
            assert all(run[metric][p] > 0 for p in ("p50", "p95", "p99")), (name, metric)
    for name in (RUN_NAMES[0], RUN_NAMES[2], RUN_NAMES[3], RUN_NAMES[4], open_name):
        assert runs[name]["tokens"] == asked, name
    assert runs["raw static batch of 3"]["tokens"] == 6 * round(asked / 6)
    one_at_a_time = ("server, 1 client", "engine in-process, no HTTP")
    for name, base in (*((n, "raw single stream") for n in one_at_a_time), (open_name, "raw static batch of 3")):
        ratio = runs[name]["tokens_per_s"] / runs[base]["tokens_per_s"]
        assert (runs[name]["ratio_to"], runs[name]["ratio"]) == (base, pytest.approx(ratio))
    goals = [t["goal"] for t in report["targets"]]
    assert len(goals) == 5 and all(isinstance(t["passed"], bool) for t in report["targets"])
    assert any("TTFT p99" in goal for goal in goals)
    assert "errors none; connection resets 0" in table(results)


def test_requests_the_server_refuses_are_counted(endless_model: Path) -> None:
    """One running and one waiting request fill this server: of four sent at once, the others get 429."""
    server = Server(endless_model, "--max-batch", "1", "--max-waiting", "1")
    try:
        model = served_model(server.base, API_KEY)
        run = asyncio.run(closed_loop(server.base, model, API_KEY, [BenchRequest("the fox", 300)] * 4, clients=4))
    finally:
        server.stop()
    summary = summarize(run)
    assert summary.errors.get("HTTP 429", 0) >= 1
    assert summary.completed >= 1 and summary.completed + sum(summary.errors.values()) == 4
    assert summary.tokens == 300 * summary.completed
    assert summary.resets == 0


async def _dropping_server(linger_reset: bool) -> tuple[asyncio.Server, str]:
    """Stands in for a server that ends a stream after its first event: closed cleanly mid-body, or
    reset (SO_LINGER 0 sends an RST), as issue 15 saw the real one do under load; the real server
    cannot be made to do it on demand. The bytes are HTTP/1.1 chunked SSE as the server sends them."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        event = b'data: {"choices": [{"index": 0, "text": "hi"}]}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.sleep(0.05)
        if linger_reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(("linger_reset", "kind"), [(False, CLOSED), (True, RESET)])
def test_a_dropped_stream_is_a_counted_reset(linger_reset: bool, kind: str) -> None:
    async def run() -> LoadRun:
        server, base = await _dropping_server(linger_reset)
        async with server:
            return await closed_loop(base, "bench", "key", [BenchRequest("the fox", 8)] * 2, clients=1)

    summary = summarize(asyncio.run(run()))
    assert (summary.completed, summary.errors, summary.resets) == (0, {kind: 2}, 2)
    assert summary.ttft.p50 > 0  # the first token arrived before the drop


def test_a_bad_rate_is_refused_by_name() -> None:
    command = [sys.executable, "-m", "onnx_server.bench", "--realistic", "--rate", "0"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={"PYTHONPATH": str(SERVER_PATH)})
    assert result.returncode == 2
    assert "--rate must be 'auto' or requests per second above 0, not '0'" in result.stderr

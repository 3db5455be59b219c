"""The ONNX server's connections under load, and its account of every request: kept-alive
connections outlive the pools in front of it, a request sent while the event loop is held is read
rather than reset, and every request, whatever its outcome, gets one access log line and one
`onnx_server_requests_total{endpoint,status,outcome}` sample."""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from infra.k8s import gateway
from tests.server_support import API_KEY, SERVER_PATH, Server, free_port, raw_exchange, status_of

pytestmark = pytest.mark.slow
MODEL = "phi3-tiny-int4"
KEY = f"Authorization: Bearer {API_KEY}\r\n".encode()


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


# The idle timeout of each pool that may hold connections to the server: each must close its idle
# connections before the server does (the server's keep-alive timeout is longer).
POOLS_IN_FRONT = {
    "httpx / the OpenAI Python SDK (httpx 0.28 Limits.keepalive_expiry default)": 5.0,
    "Caddy reverse_proxy on the VM (2.10 transport http keep_alive idle_timeout default)": 120.0,
    "Envoy Gateway on Kubernetes (the stack's BackendTrafficPolicy connectionIdleTimeout)": _seconds(
        gateway.IDLE_TIMEOUT
    ),
    "Google Cloud load balancers (backend keep-alive 600 s)": 600.0,
}

# What each request below must be counted and logged as: (status sent, outcome).
EXPECTED_OUTCOMES = {
    "completion": (200, "ok"),
    "invalid temperature": (400, "rejected"),
    "no API key": (401, "rejected"),
    "unknown model": (404, "rejected"),
    "body over --max-body-bytes": (413, "rejected"),
    "bytes that are not HTTP": (400, "rejected"),
    "headers too slow": (408, "timeout"),
    "body too slow": (408, "timeout"),
    "stream past --request-timeout": (200, "timeout"),
    "queued behind it": (200, "ok"),
    "past --max-waiting": (429, "rejected"),
    "stream left by its client": (200, "client_gone"),
    "completion left by its client": (499, "client_gone"),
}


def _answer(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length (b"" if the server closed, b"reset" on a reset)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except ConnectionResetError:
        return b"reset"
    return head + b"\r\n\r\n" + body


def test_the_keep_alive_timeout_outlives_every_pool_in_front() -> None:
    from onnx_server.settings import Settings

    keep_alive = Settings(model=Path()).keep_alive_timeout
    shorter = {pool: idle for pool, idle in POOLS_IN_FRONT.items() if idle >= keep_alive}
    assert not shorter, f"the server ({keep_alive:g} s) would close idle connections before {shorter}"


def test_a_kept_alive_connection_idle_past_the_client_pool_expiry_is_still_served(server: Server) -> None:
    """Uvicorn's default (5 s) equals httpx's pool expiry: a request sent at that moment met a
    connection the server was closing (a reset, no request on the server)."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        assert status_of(_answer(sock)) == 200
        time.sleep(6)
        sock.sendall(request)
        assert status_of(_answer(sock)) == 200


# --- the event loop held (the decode thread holding the GIL through a prefill) ----------------------


# A stand-in for the server's app around the server's own protocol, run as its own process (the
# clients must not share its GIL). GET /hold makes a thread hold the GIL as the decode thread does,
# through a whole prefill in onnxruntime-genai 0.14.1's append_tokens (16 prompts x 1000 tokens:
# 2.6 s on the tiny model, measured here; 7.4 s for 8 x 100 on a 1536 x 12 one), while the loop
# keeps cycling as it does feeding streams. The thread takes the GIL when the loop gives it up in
# select(), so the loop resumes with the events it saw before the hold, and the timers that came
# due meanwhile run before it reads what arrived.
HOLDING_SERVER = """
import asyncio, sys, threading, time
import numpy as np, onnxruntime_genai as og, uvicorn
from onnx_server.protocol import with_header_timeout

model = og.Model(sys.argv[1])

def prefill():
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=1010, batch_size=16)
    generator = og.Generator(model, params)
    time.sleep(0.05)
    generator.append_tokens(np.full((16, 1000), 5, dtype=np.int32))

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        threading.Thread(target=prefill, daemon=True).start()
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            await asyncio.sleep(0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_config=None, lifespan="off",
            timeout_keep_alive=1, http=with_header_timeout(1.0))
"""


@pytest.fixture
def held_server(served_model: Path) -> Iterator[int]:
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": str(SERVER_PATH)}
    process = subprocess.Popen([sys.executable, "-c", HOLDING_SERVER, str(served_model), str(port)], env=environment)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_requests_sent_while_the_loop_is_held_are_answered_not_reset(held_server: int) -> None:
    request = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    kept = socket.create_connection(("127.0.0.1", held_server), timeout=10)
    kept.sendall(request)
    assert status_of(_answer(kept)) == 200  # now idle; its keep-alive deadline is 1 s away
    fresh = socket.create_connection(("127.0.0.1", held_server), timeout=10)  # its header deadline: 1 s
    time.sleep(0.1)
    holder = threading.Thread(target=raw_exchange, args=(held_server, b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"))
    holder.start()
    time.sleep(0.4)  # inside the hold: both requests arrive before either deadline, unread until it ends
    kept.sendall(request)
    fresh.sendall(request)
    answers = {"kept-alive": _answer(kept), "fresh": _answer(fresh)}
    holder.join(10)
    kept.close()
    fresh.close()
    assert {name: status_of(answer) for name, answer in answers.items()} == {"kept-alive": 200, "fresh": 200}, answers


# --- one log line and one metric sample per request, whatever its outcome ---------------------------


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers)
    return head + b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _counted(base: str) -> collections.Counter[tuple[str, int, str]]:
    found: collections.Counter[tuple[str, int, str]] = collections.Counter()
    for line in httpx.get(base + "/metrics").text.splitlines():
        match = re.match(r"onnx_server_requests_total\{(.*)\} (\S+)$", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[1]))
            if labels["endpoint"] not in ("/metrics", "/health", "/ready"):
                found[(labels["endpoint"], int(labels["status"]), labels["outcome"])] = int(float(match[2]))
    return found


def _logged(server: Server) -> collections.Counter[tuple[str, int, str]]:
    found: collections.Counter[tuple[str, int, str]] = collections.Counter()
    for line in server.log.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("message") == "request" and entry.get("path") not in ("/metrics", "/health", "/ready"):
            found[(entry.get("path") or "other", entry["status"], entry.get("outcome", "?"))] += 1
    return found


def _drive_every_outcome(server: Server) -> dict[str, tuple[str, int]]:
    """Each request of EXPECTED_OUTCOMES, made as a client would; returns (path, status seen)."""
    seen: dict[str, tuple[str, int]] = {}
    completions = "/v1/completions"

    def post(name: str, body: dict[str, Any], **kwargs: Any) -> None:
        seen[name] = (completions, server.post(completions, json=body, **kwargs).status_code)

    post("completion", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    post("invalid temperature", {"model": MODEL, "prompt": "hi", "temperature": "hot"})
    seen["no API key"] = (completions, httpx.post(server.base + completions, json={"model": MODEL}).status_code)
    post("unknown model", {"model": "nope", "prompt": "hi"})
    huge = _post(completions, b"{" + b" " * 5000 + b"}", KEY)
    seen["body over --max-body-bytes"] = (completions, status_of(raw_exchange(server.port, huge)[0]))
    seen["bytes that are not HTTP"] = ("other", status_of(raw_exchange(server.port, b"NOT HTTP\r\n\r\n")[0]))
    trickle = [b"GET /v1/models HTTP/1.1\r\n", *[b"X-Slow: a\r\n"] * 12]
    seen["headers too slow"] = ("/v1/models", status_of(raw_exchange(server.port, *trickle, pause=0.25)[0]))
    slow = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Length: 200\r\n\r\n"
    seen["body too slow"] = (completions, status_of(raw_exchange(server.port, slow, b'{"model": ')[0]))

    # One sequence at a time (--max-batch 1, --max-waiting 1): a long stream runs, one request
    # waits behind it, the next is refused; the stream ends at --request-timeout.
    client = openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)
    stream = client.completions.create(model=MODEL, prompt="long", max_tokens=8000, stream=True)
    next(iter(stream))
    queued = threading.Thread(target=post, args=("queued behind it", {"model": MODEL, "prompt": "q", "max_tokens": 2}))
    queued.start()
    time.sleep(0.5)
    post("past --max-waiting", {"model": MODEL, "prompt": "r", "max_tokens": 2})
    with pytest.raises(openai.APIError, match="timed out"):  # the SDK raises the stream's error event
        for _ in stream:
            pass
    seen["stream past --request-timeout"] = (completions, 200)
    queued.join(30)

    left = client.completions.create(model=MODEL, prompt="left", max_tokens=8000, stream=True)
    next(iter(left))
    left.close()
    seen["stream left by its client"] = (completions, 200)
    body = json.dumps({"model": MODEL, "prompt": "gone", "max_tokens": 8000}).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(_post(completions, body, KEY))
        time.sleep(0.5)
    seen["completion left by its client"] = (completions, 499)
    return seen


def test_every_outcome_gets_one_log_line_and_one_metric_sample(endless_model: Path) -> None:
    server = Server(
        endless_model,
        *("--max-batch", "1", "--max-waiting", "1", "--request-timeout", "2"),
        *("--header-timeout", "1", "--body-timeout", "1", "--max-body-bytes", "1000"),
    )
    try:
        before = _counted(server.base)
        seen = _drive_every_outcome(server)
        time.sleep(1.5)  # the server notices the last disconnect
        counted = _counted(server.base) - before
    finally:
        server.stop()
    statuses = {name: status for name, (_, status) in seen.items()}
    assert statuses == {name: status for name, (status, _) in EXPECTED_OUTCOMES.items()}
    expected = collections.Counter(
        (seen[name][0], status, outcome) for name, (status, outcome) in EXPECTED_OUTCOMES.items()
    )
    assert counted == expected
    assert _logged(server) == expected


# --- Poisson load: no resets, and the server counts what the clients sent ----------------------------


async def _poisson_load(server: Server, seconds: float, rate: float) -> tuple[int, collections.Counter[str]]:
    """Streams arriving at random (Poisson), of mixed lengths, some with long prompts (a long
    prefill holds the GIL), over two pools: httpx's (idle 5 s, as the OpenAI SDK's) and one that
    keeps idle connections 60 s, as a proxy's does."""
    rng = random.Random(15)  # noqa: S311 (test load)
    results: collections.Counter[str] = collections.Counter()
    pools = [
        httpx.AsyncClient(base_url=server.base, headers=server.headers, timeout=120),
        httpx.AsyncClient(
            base_url=server.base, headers=server.headers, timeout=120, limits=httpx.Limits(keepalive_expiry=60)
        ),
    ]

    async def one(pool: httpx.AsyncClient, prompt: str, max_tokens: int) -> None:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True}
        try:
            async with pool.stream("POST", "/v1/completions", json=body) as reply:
                async for _ in reply.aiter_lines():
                    pass
            results[f"http {reply.status_code}"] += 1
        except httpx.TransportError as error:
            results[f"{type(error).__name__}: {error}"] += 1

    tasks: list[asyncio.Task[None]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        long = rng.random() < 0.25
        prompt = "".join(rng.choice("abcdefghij klmnop") for _ in range(1500)) if long else "hello " * 10
        max_tokens = int(math.exp(rng.uniform(math.log(16), math.log(256))))
        tasks.append(asyncio.create_task(one(rng.choice(pools), prompt, max_tokens)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)
    for pool in pools:
        await pool.aclose()
    return len(tasks), results


def test_poisson_streams_meet_no_reset_and_the_server_counts_every_one(served_model: Path) -> None:
    server = Server(served_model)
    try:
        sent, results = asyncio.run(_poisson_load(server, seconds=40, rate=3))
        assert results == {"http 200": sent}, results
        counted = sum(n for (endpoint, _, _), n in _counted(server.base).items() if endpoint == "/v1/completions")
    finally:
        server.stop()
    assert counted == sent
    assert sum(n for (path, _, _), n in _logged(server).items() if path == "/v1/completions") == sent


def test_drain_time_requests_are_logged_and_counted_too(endless_model: Path) -> None:
    """SIGTERM with a body still arriving (503, refused) and a stream still running at the drain
    deadline (ended by the server: cancelled): one log line each, with its outcome."""
    server = Server(endless_model, "--graceful-shutdown-seconds", "2", "--body-timeout", "30")
    started = threading.Event()

    def stream() -> None:
        body = {"model": MODEL, "prompt": "drain", "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", server.base + "/v1/completions", json=body, headers=server.headers, timeout=60) as r:
            for _ in r.iter_lines():
                started.set()

    answers: list[bytes] = []
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Length: 500\r\n\r\n"
    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    sender = threading.Thread(target=lambda: answers.append(raw_exchange(server.port, head, b"{", timeout=30)[0]))
    sender.start()
    time.sleep(0.5)
    assert server.stop(timeout=30) == 0
    reader.join(30)
    sender.join(30)
    assert status_of(answers[0]) == 503 and b"connection: close" in answers[0].lower()
    assert _logged(server) == {("/v1/completions", 503, "rejected"): 1, ("/v1/completions", 200, "cancelled"): 1}

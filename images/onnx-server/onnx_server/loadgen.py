"""Load for the realistic benchmark, driven the way vLLM's serving benchmark drives a server.

A seeded workload of mixed lengths; a closed loop (N clients, each sending its next request when its
last one ended) and an open loop (each request sent at its Poisson arrival time, whatever the server
is doing). Every request is streamed and timed token by token; every failure is kept with its kind.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx
import numpy as np

# The documented distributions (README, ONNX server benchmark).
PROMPT_WORDS = (16, 160)  # uniform; the words below are about one token each for the bench models
MAX_TOKENS = (16, 256)  # log-uniform, as issue 15 measured
# fmt: off
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "small", "language", "models",
    "answer", "questions", "on", "kubernetes", "with", "onnx", "runtime", "vllm", "and", "ollama", "serving",
    "tokens", "per", "second", "latency", "gpu", "cpu", "memory", "cache", "json", "tool", "call",
)
# fmt: on
# Every prompt starts with its number, so no two prompts are alike.
PROMPT_PREFIX = "request {}: "
RESET = "connection reset"
CLOSED = "connection closed mid-response"


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    max_tokens: int


@dataclass
class Outcome:
    """One request as its client saw it; times in seconds from sending it."""

    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    tokens: int = 0
    error: str | None = None  # None: it completed ([DONE], no error event)

    @property
    def reset(self) -> bool:
        return self.error in (RESET, CLOSED)


@dataclass
class LoadRun:
    outcomes: list[Outcome]
    seconds: float  # first request sent to last one ended


def log_uniform(rng: np.random.Generator, low: int, high: int, count: int) -> list[int]:
    """Integers in [low, high] whose logarithm is uniform."""
    values = np.floor(np.exp(rng.uniform(math.log(low), math.log(high + 1), count))).astype(int)
    return [int(v) for v in np.clip(values, low, high)]


def workload(
    count: int,
    seed: int = 0,
    prompt_words: tuple[int, int] = PROMPT_WORDS,
    max_tokens: tuple[int, int] = MAX_TOKENS,
) -> list[BenchRequest]:
    """`count` requests, the same for the same seed: prompt length in words uniform over
    `prompt_words`, max_tokens log-uniform over `max_tokens` (both bounds included)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(prompt_words[0], prompt_words[1], count, endpoint=True)
    budgets = log_uniform(rng, *max_tokens, count)
    return [
        BenchRequest(_prompt(i, rng, int(length)), budget)
        for i, (length, budget) in enumerate(zip(lengths, budgets, strict=True))
    ]


def equal_requests(requests: Sequence[BenchRequest], count: int, seed: int = 0) -> list[BenchRequest]:
    """`count` requests of one size: the mean prompt and the mean max_tokens of `requests` (a
    workload). The prompts start as the workload's do, so they are as long in tokens, not only in
    words: the prefix's numbers take several tokens each."""
    prefix = len(PROMPT_PREFIX.format(0).split())
    words = round(sum(len(r.prompt.split()) - prefix for r in requests) / len(requests))
    budget = round(sum(r.max_tokens for r in requests) / len(requests))
    rng = np.random.default_rng(seed)
    return [BenchRequest(_prompt(i, rng, words), budget) for i in range(count)]


def _prompt(index: int, rng: np.random.Generator, words: int) -> str:
    return PROMPT_PREFIX.format(index) + " ".join(rng.choice(WORDS, words))


def poisson_arrivals(rate: float, count: int, seed: int = 0) -> list[float]:
    """Arrival times (seconds from the start) of a Poisson process of `rate` requests per second."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    return [float(t) for t in np.cumsum(gaps)]


def _error_of(error: BaseException) -> str:
    cause: BaseException | None = error
    while cause is not None:  # aiohttp wraps the socket's error (a payload error's cause, say)
        if isinstance(cause, ConnectionResetError):
            return RESET
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        # A body cut short: aiohttp names the socket's error only in the message (its repr).
        return RESET if "ConnectionResetError" in str(error) else CLOSED
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


async def stream(client: aiohttp.ClientSession, base: str, model: str, request: BenchRequest) -> Outcome:
    """Send one streamed completion and time it: TTFT to the first text, then each gap."""
    body = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    outcome = Outcome()
    started = time.perf_counter()
    try:
        async with client.post(base + "/v1/completions", json=body) as response:
            if response.status != 200:
                await response.read()
                outcome.error = f"HTTP {response.status}"
                return outcome
            done = await _read_events(response, outcome, started)
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        outcome.error = _error_of(error)
        return outcome
    if outcome.error is None and not done:
        outcome.error = "stream ended without [DONE]"
    if outcome.error is None:
        outcome.e2e = time.perf_counter() - started
    return outcome


async def _read_events(response: aiohttp.ClientResponse, outcome: Outcome, started: float) -> bool:
    """Time each event with text into `outcome`, keep the last error event; True at [DONE]."""
    chunks = 0
    last = started
    async for raw in response.content:  # one line at a time
        if not raw.startswith(b"data: "):
            continue
        line = raw.rstrip(b"\r\n")
        if line == b"data: [DONE]":
            return True
        try:
            event = json.loads(line[6:])
        except ValueError:
            outcome.error = "malformed event"
            continue
        if "error" in event:
            outcome.error = f"stream error {event['error'].get('code') or event['error'].get('type')}"
        if event.get("usage"):
            outcome.tokens = int(event["usage"]["completion_tokens"])
        if any(choice.get("text") for choice in event.get("choices", ())):
            now = time.perf_counter()
            if outcome.ttft is None:
                outcome.ttft = now - started
            else:
                outcome.itl.append(now - last)
            last = now
            chunks += 1
            outcome.tokens = max(outcome.tokens, chunks)  # until usage says exactly
    return False


def client(key: str, connections: int) -> aiohttp.ClientSession:
    """An HTTP client with one connection per request in flight: no request waits for the pool.
    aiohttp parses HTTP in C: on a machine whose cores the server shares, the client's own work per
    streamed token is taken from the server (httpx's pure-Python parsing took about 3 times the CPU
    per event here, which showed as server throughput)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600),
        headers=_auth(key),
    )


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def closed_loop(base: str, model: str, key: str, requests: Sequence[BenchRequest], clients: int) -> LoadRun:
    """`clients` clients share the requests in order; each sends its next when its last one ended."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    pending = iter(enumerate(requests))

    async def client_loop(shared: aiohttp.ClientSession) -> None:
        for index, request in pending:
            outcomes[index] = await stream(shared, base, model, request)

    async with client(key, clients) as shared:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(shared) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return LoadRun([o for o in outcomes if o is not None], seconds)


async def open_loop(
    base: str, model: str, key: str, requests: Sequence[BenchRequest], arrivals: Sequence[float]
) -> LoadRun:
    """Request i is sent at `arrivals[i]` seconds from the start, however many are still running."""
    async with client(key, len(requests)) as shared:
        started = time.perf_counter()

        async def send(request: BenchRequest, at: float) -> Outcome:
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            return await stream(shared, base, model, request)

        outcomes = await asyncio.gather(*(send(r, at) for r, at in zip(requests, arrivals, strict=True)))
        seconds = time.perf_counter() - started
    return LoadRun(list(outcomes), seconds)


def served_model(base: str, key: str) -> str:
    """The model name the server answers to (its first in /v1/models)."""
    response = httpx.get(base + "/v1/models", headers=_auth(key), timeout=30)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])

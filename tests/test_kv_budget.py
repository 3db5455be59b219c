"""The ONNX server's KV cache stays within a memory budget: requests are admitted while their prompts
fit, the newest give their rows back when the running ones' next tokens do not (preemption), a
request that could never fit is refused with OpenAI's context-length error, and the pages of a
sequence that leaves go back to the kernel (read from /proc/self/smaps, the kernel's own account of
each mapping).

The tiny model's cache is 2 KiB per token (2 layers x keys and values x 2 kv heads x 64 x float32),
so a budget of a few hundred tokens fills with a few requests."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server_support import API_KEY, Server

TOKEN_BYTES = 2 * 2 * 2 * 64 * 4
CAPACITY = 900  # tokens: the worst cases of two requests of MAX_TOKENS fit at once, three do not
MAX_TOKENS = 400
MODEL = "phi3-tiny-int4"
GIB = 1 << 30


def _smaps_rss(ranges: list[tuple[int, int]]) -> int:
    """Resident bytes of the mappings that hold these address ranges (the kernel's count of their
    pages; it merges adjacent mappings of the same kind, so each is counted once)."""
    total = found = 0
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for index, line in enumerate(lines):
        span = line.split(" ", 1)[0]
        if "-" not in span or not all(c in "0123456789abcdef-" for c in span):
            continue
        low, high = (int(part, 16) for part in span.split("-"))
        if any(start < high and low < end for start, end in ranges):
            rss = next(d for d in lines[index + 1 :] if d.startswith("Rss:"))
            total += int(rss.split()[1]) * 1024
            found += 1
    assert found, "the cache's mappings are not in /proc/self/smaps"
    return total


def test_a_leaving_sequence_gives_its_cache_pages_back(endless_model: Path) -> None:
    from onnx_server.decoder import SlotDecoder, cpu_session
    from onnx_server.model_config import read_model_config

    config = read_model_config(endless_model)
    decoder = SlotDecoder(cpu_session(config, 1), config, rows=4)
    ranges = [(b.ctypes.data, b.ctypes.data + b.nbytes) for b in decoder._keys + decoder._values]

    def cache_rss() -> int:
        return _smaps_rss(ranges)

    empty = cache_rss()
    decoder.begin("long")
    for start in range(0, 6000, 500):
        decoder.prefill([5 + (start + i) % 400 for i in range(500)])
    decoder.join()
    decoder.begin("short")
    decoder.prefill(list(range(5, 105)))
    decoder.join()
    decoder.decode([7, 8])
    full = cache_rss()
    assert full - empty >= 0.9 * 6101 * TOKEN_BYTES, (empty, full)
    # The long row leaves: the short one moves into its row, and both rows keep only what it holds.
    decoder.release("long")
    assert decoder.running == ["short"] and decoder.length("short") == 101
    after = cache_rss()
    assert after - empty <= 200 * TOKEN_BYTES + 64 * 4096, (empty, full, after)
    # The short row still decodes from its moved cache.
    assert decoder.decode([9]).shape[0] == 1
    decoder.release("short")
    assert cache_rss() - empty <= 16 * 4096


def test_memory_limit_is_the_tightest_of_cgroup_and_machine(tmp_path: Path) -> None:
    from onnx_server.kv_budget import default_capacity_bytes, memory_limit

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25165824 kB\nMemFree:        1000 kB\n")  # 24 GiB
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory_limit((v2, v1), meminfo) == 24 * GIB
    v2.write_text(f"{8 * GIB}\n")
    assert memory_limit((v2, tmp_path / "absent"), meminfo) == 8 * GIB
    # 8 GiB limit, 3 GiB loaded: a tenth of the limit stays free for everything else.
    assert default_capacity_bytes(8 * GIB, 3 * GIB) == 8 * GIB - 3 * GIB - 8 * GIB // 10
    assert default_capacity_bytes(2 * GIB, 2 * GIB) == 0


@pytest.fixture(scope="module")
def small_cache(endless_model: Path) -> Iterator[Server]:
    running = Server(endless_model, "--kv-cache-gib", repr(CAPACITY * TOKEN_BYTES / GIB), "--max-batch", "8")
    yield running
    running.stop()


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)


def test_a_request_waits_for_the_room_its_prompt_needs_not_for_another_requests_worst_case(
    small_cache: Server,
) -> None:
    """A long request whose max_tokens would take the whole cache does not make short ones wait
    for it to end: the cache holds what has been written, not what might be."""
    client = _client(small_cache)
    long_prompt = "a long answer"
    prompt = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=1).usage
    assert prompt is not None
    ended: dict[str, float] = {}

    def long_stream() -> None:
        budget = CAPACITY - prompt.prompt_tokens - 2  # leaves less than any other request's worst case
        stream = client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=budget, stream=True)
        finish = [chunk.choices[0].finish_reason for chunk in stream][-1]
        ended["long"] = time.monotonic()
        ended["long finish"] = 1.0 if finish == "length" else 0.0

    def short(index: int) -> None:
        reply = client.completions.create(model=MODEL, prompt=f"short {index}", max_tokens=16, temperature=0)
        assert reply.usage is not None and reply.usage.completion_tokens == 16
        ended[f"short {index}"] = time.monotonic()

    long = threading.Thread(target=long_stream)
    long.start()
    deadline = time.monotonic() + 30
    while small_cache.samples()["vllm:num_requests_running"] < 1:
        assert time.monotonic() < deadline, "the long request never started"
        time.sleep(0.01)
    shorts = [threading.Thread(target=short, args=(i,)) for i in range(3)]
    for thread in shorts:
        thread.start()
    for thread in [*shorts, long]:
        thread.join(300)
    assert ended["long finish"] == 1.0
    assert all(ended[f"short {i}"] < ended["long"] for i in range(3)), ended
    assert small_cache.samples()["vllm:kv_cache_usage_perc"] == 0.0


def test_a_full_cache_preempts_the_newest_and_each_resumes_where_it_was(small_cache: Server) -> None:
    """Eight requests of 400 tokens in a cache of 900: all start, and as they grow the newest give
    their rows back and are prefilled again with what they have generated (recomputation). Each
    greedy answer is the one it gives alone, so no token is lost, repeated or fed in twice, and the
    cache never holds more than its budget. (A recomputed cache differs from the decoded one in the
    low bits, so a sampled token may come out otherwise after a preemption; greedy ones do not.)"""
    client = _client(small_cache)
    prompts = [f"request {i}: the quick brown fox" for i in range(8)]

    def complete(prompt: str) -> str:
        reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
        assert reply.usage is not None and reply.usage.completion_tokens == MAX_TOKENS
        return reply.choices[0].text

    alone = [complete(prompt) for prompt in prompts]  # one at a time: each fits the cache alone
    preempted_before = small_cache.samples()["vllm:num_preemptions_total"]
    together: dict[int, str] = {}

    def send(index: int) -> None:
        together[index] = complete(prompts[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    seen: set[tuple[float, float]] = set()
    while any(t.is_alive() for t in threads):
        samples = small_cache.samples()
        seen.add((samples["vllm:num_requests_running"], samples["vllm:num_requests_waiting"]))
        assert samples["vllm:kv_cache_usage_perc"] <= 1.0
        time.sleep(0.02)
    for thread in threads:
        thread.join(300)
    assert [together[i] for i in range(len(prompts))] == alone
    assert small_cache.samples()["vllm:num_preemptions_total"] > preempted_before
    assert max(running for running, _ in seen) > 2, seen  # more ran at once than their worst cases allow
    assert any(waiting > 0 for _, waiting in seen), seen  # a preempted request waits again
    assert small_cache.samples()["vllm:kv_cache_usage_perc"] == 0.0


def test_a_preempted_guided_request_keeps_its_grammar_state(small_cache: Server) -> None:
    """Guided requests preempted mid-answer resume inside their grammar, not at its start: each
    answer is the one it gives alone, and a valid prefix of the schema's JSON."""
    client = _client(small_cache)
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 150}
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "numbers", "schema": schema}}

    def complete(index: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"numbers, please ({index})"}],
            response_format=response_format,
            max_tokens=300,
            temperature=0,
        )
        return reply.choices[0].message.content or ""

    alone = [complete(i) for i in range(6)]
    preempted_before = small_cache.samples()["vllm:num_preemptions_total"]
    together: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, complete(i))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert small_cache.samples()["vllm:num_preemptions_total"] > preempted_before
    assert [together[i] for i in range(6)] == alone
    for answer in alone:  # cut off by max_tokens, inside the array
        assert re.fullmatch(r"\s*\[\s*(-?\d+\s*,\s*)*-?\d*\s*", answer), answer[:200]


def test_a_request_larger_than_the_cache_is_refused_and_the_server_keeps_serving(small_cache: Server) -> None:
    client = openai.OpenAI(base_url=small_cache.base + "/v1", api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="phi3-tiny-int4", prompt="the quick brown fox", max_tokens=CAPACITY)
    error = refused.value
    assert error.code == "context_length_exceeded"
    assert f"maximum context length is {CAPACITY} tokens" in error.message
    assert "--kv-cache-gib" in error.message
    # Without max_tokens the completion is bounded by the cache, not refused.
    reply = client.completions.create(model="phi3-tiny-int4", prompt="the quick brown fox")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == CAPACITY

"""The ONNX server's KV cache stays within a memory budget: requests are admitted while their worst
case fits, a request that could never fit is refused with OpenAI's context-length error, and the
pages of a sequence that leaves go back to the kernel (read from /proc/self/smaps, the kernel's own
account of each mapping).

The tiny model's cache is 2 KiB per token (2 layers x keys and values x 2 kv heads x 64 x float32),
so a budget of a few hundred tokens makes requests wait for each other."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server_support import API_KEY, Server

TOKEN_BYTES = 2 * 2 * 2 * 64 * 4
CAPACITY = 900  # tokens: two of the requests below fit at once, three do not
MAX_TOKENS = 400
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


def test_requests_wait_until_their_worst_case_fits_the_cache(small_cache: Server) -> None:
    prompts = [f"request {i}: the quick brown fox" for i in range(8)]
    replies: dict[int, httpx.Response] = {}

    def send(index: int) -> None:
        body = {"model": "phi3-tiny-int4", "prompt": prompts[index], "max_tokens": MAX_TOKENS, "temperature": 0}
        replies[index] = small_cache.post("/v1/completions", json=body, timeout=300)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    # While two run, the other six wait, the one held for the cache's room among them.
    seen: set[tuple[float, float]] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        samples = small_cache.samples()
        seen.add((samples["vllm:num_requests_running"], samples["vllm:num_requests_waiting"]))
        assert samples["vllm:kv_cache_usage_perc"] <= 1.0
        time.sleep(0.02)
    for thread in threads:
        thread.join(300)
    assert all(r.status_code == 200 for r in replies.values()), [r.text for r in replies.values()]
    assert all(r.json()["usage"]["completion_tokens"] == MAX_TOKENS for r in replies.values())
    assert max(running for running, _ in seen) <= 2, seen
    assert (2.0, 6.0) in seen, seen
    at_most_two, total = small_cache.decode_steps(2)
    assert total > 0 and at_most_two == total, (at_most_two, total)
    assert small_cache.samples()["vllm:kv_cache_usage_perc"] == 0.0


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

"""How many tokens the KV cache may hold at once, and each running request's share of them.

The cache is committed as tokens are written (decoder.py), so without a bound the sum of the running
requests' lengths decides the memory used: 16 rows of a long-context model can ask for more than the
container may use, and the kernel's OOM killer would end every request at once. A request reserves
its prompt when it takes a row and a token per decode step after that (engine.py); the oldest
waiting request is admitted only when its prompt fits, and when the running requests' next tokens
do not, the newest gives its row back (preemption) and is prefilled again later. A request whose
worst case (prompt + max_tokens) could not fit even alone is refused up front.

The default capacity is what the memory limit leaves once the model is loaded: the cgroup's limit
(the container's) or the machine's memory, minus what the process holds after loading, minus a
headroom for everything else (logits, tokenizer, Python, allocator slack).
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path

GIB = 1 << 30
MIN_HEADROOM = 512 << 20  # bytes; or a tenth of the limit, whichever is more
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2 (the container's own, in its namespace)
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)
MEMINFO = Path("/proc/meminfo")
STATUS = Path("/proc/self/status")


def bytes_per_token(layers: int, kv_heads: int, head_size: int, item_size: int = 4) -> int:
    """Keys and values of every layer for one token (the builder's CPU cache is float32)."""
    return 2 * layers * kv_heads * head_size * item_size


def memory_limit(cgroup_files: tuple[Path, ...] = CGROUP_LIMITS, meminfo: Path = MEMINFO) -> int:
    """Bytes this process may use: the tightest of its cgroup's limit and the machine's memory."""
    limits = []
    for path in cgroup_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) is no limit; v1 writes a huge number for none
            limits.append(int(text))
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            limits.append(int(line.split()[1]) * 1024)
    if not limits:
        raise RuntimeError(f"cannot tell how much memory this process may use (read {meminfo})")
    return min(limits)


def resident_bytes(status: Path = STATUS) -> int:
    """What the process holds now (VmRSS): the loaded weights, mostly."""
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def default_capacity_bytes(limit: int, resident: int) -> int:
    """What is left for the KV cache (0 when nothing is)."""
    headroom = max(MIN_HEADROOM, limit // 10)
    return max(0, limit - resident - headroom)


class KvBudget:
    """Tokens reserved by the running requests against the cache's capacity. The decode thread
    reserves and releases; requests read `capacity` to refuse what could never fit."""

    def __init__(self, capacity_tokens: int, bytes_per_token: int) -> None:
        self.capacity = capacity_tokens
        self.bytes_per_token = bytes_per_token
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        return self._reserved

    def fits(self, tokens: int) -> bool:
        return self._reserved + tokens <= self.capacity

    def reserve(self, tokens: int) -> None:
        with self._lock:
            if self._reserved + tokens > self.capacity:
                raise RuntimeError(f"{tokens} tokens do not fit the KV cache")
            self._reserved += tokens

    def release(self, tokens: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - tokens)

    @property
    def usage(self) -> float:
        """Reserved share of the capacity, 0 to 1 (vllm:kv_cache_usage_perc)."""
        return self._reserved / self.capacity if self.capacity else 1.0

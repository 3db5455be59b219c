"""Waiting for a fresh stack to serve before smoke-testing it.

`pulumi up` returns once the resources exist; the VM then still pulls images, downloads and converts
the model, and Kubernetes replicas load theirs. Every backend is polled through the gateway with
`GET <baseUrl>/models` and the API key: 200 means ready; anything else (401 before the proxy has its
key files, 404 before a route exists, 5xx while a backend starts, connection errors) means not yet,
and the poll backs off. When the budget runs out, the report names each backend that was not ready
with the last status or error it gave.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import httpx

from delivery.smoke import Endpoint, parse_endpoints

NAMESPACE = "slm-serving"
# infra/config/backends.py: BackendConfig.startup_minutes (delivery reads the raw stack config).
DEFAULT_STARTUP_MINUTES = 60
# On top of the slowest backend's startup budget: the VM's boot, image pulls and the proxy's start.
MARGIN_MINUTES = 15
FIRST_DELAY = 2.0
MAX_DELAY = 30.0

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


def default_budget_minutes(config: Mapping[str, object]) -> int:
    """The largest `backends.<name>.startupMinutes` of the enabled backends, plus a margin."""
    backends = config.get(f"{NAMESPACE}:backends")
    minutes: list[int] = []
    if isinstance(backends, Mapping):
        for spec in backends.values():
            if isinstance(spec, Mapping) and spec.get("enabled"):
                value = spec.get("startupMinutes", DEFAULT_STARTUP_MINUTES)
                if isinstance(value, int) and not isinstance(value, bool):
                    minutes.append(value)
    return max(minutes, default=DEFAULT_STARTUP_MINUTES) + MARGIN_MINUTES


@dataclass
class BackendReadiness:
    backend: str
    base_url: str
    ready: bool = False
    last: str = "not polled"
    attempts: int = 0


@dataclass
class ReadinessReport:
    results: list[BackendReadiness]
    budget_seconds: float
    waited_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ready for r in self.results)

    def summary(self) -> str:
        if not self.results:
            return "no backends in the stack's endpoints output"
        waiting = [r for r in self.results if not r.ready]
        if not waiting:
            return f"all backends ready after {self.waited_seconds:.0f}s"
        details = " | ".join(f"{r.backend}: {r.last} ({r.attempts} attempts)" for r in waiting)
        return f"not ready within {self.budget_seconds:.0f}s: {details}"


def _probe(http: httpx.Client, endpoint: Endpoint, api_key: str) -> tuple[bool, str]:
    try:
        response = http.get(f"{endpoint.base_url}/models", headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as error:
        text = " ".join(str(error).split()) or type(error).__name__
        return False, f"{type(error).__name__}: {text.replace(api_key, '[secret]')}"
    if response.status_code == 200:
        return True, "200"
    return False, f"HTTP {response.status_code}"


def wait_until_ready(
    endpoints: object,
    api_key: str,
    verify: ssl.SSLContext | bool = True,
    *,
    budget_seconds: float,
    request_timeout: float = 10.0,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _: None,
) -> ReadinessReport:
    """Poll every backend until all answer 200 or `budget_seconds` have passed (each at least once)."""
    pending = parse_endpoints(endpoints)
    results = {e.backend: BackendReadiness(e.backend, e.base_url) for e in pending}
    report = ReadinessReport(list(results.values()), budget_seconds)
    start = clock()
    deadline = start + budget_seconds
    delay = first_delay
    with httpx.Client(verify=verify, timeout=request_timeout) as http:
        while True:
            for endpoint in list(pending):
                result = results[endpoint.backend]
                result.attempts += 1
                result.ready, result.last = _probe(http, endpoint, api_key)
                if result.ready:
                    pending.remove(endpoint)
                    log(f"{endpoint.backend} ready after {clock() - start:.0f}s")
            now = clock()
            report.waited_seconds = now - start
            if not pending or now >= deadline:
                return report
            log(f"waiting for {', '.join(f'{e.backend} ({results[e.backend].last})' for e in pending)}")
            sleep(min(delay, max(deadline - now, 0.0)))
            delay = min(delay * 2, max_delay)


def retry_until(
    attempt: Callable[[], T],
    deadline: float,
    retry_on: type[E],
    *,
    first_delay: float = FIRST_DELAY,
    max_delay: float = MAX_DELAY,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T | E:
    """`attempt()`'s value, or the last `retry_on` error it raised when `deadline` has passed."""
    delay = first_delay
    while True:
        try:
            return attempt()
        except retry_on as error:
            now = clock()
            if now >= deadline:
                return error
            sleep(min(delay, deadline - now))
            delay = min(delay * 2, max_delay)

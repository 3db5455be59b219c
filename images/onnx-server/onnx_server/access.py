"""One access log line and one `onnx_server_requests_total` sample for every request the server
read, whatever became of it: answered, refused, timed out, failed, or left by its client. The
outcome says how it ended; the status is what went out on the wire (a stream's 200 stays 200 when
it later ends with an error event)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from onnx_server.metrics import Metrics

log = logging.getLogger("onnx_server.api")
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
KNOWN_PATHS = OPEN_PATHS | DOCS_PATHS | {"/v1/models", "/v1/chat/completions", "/v1/completions"}
CLIENT_GONE = 499  # nginx's code for "the client closed the connection first": nothing was sent

# outcome -> when (README: access log and request metric)
OUTCOMES = {
    "ok": "answered in full",
    "rejected": "refused before generating: 4xx (validation, 401, 404, 413, 429 at capacity), 503 loading or draining",
    "timeout": "a deadline passed: 408 (headers, body), 504 (--request-timeout, also mid-stream)",
    "client_gone": "the client closed the connection before the answer ended (499 when nothing was sent)",
    "cancelled": "the server ended a running generation: the drain deadline",
    "error": "the server failed: 5xx, or an error event mid-stream",
}


@dataclass
class RequestRecord:
    """What the routes learn about a request that the HTTP layer cannot see (kept in scope state)."""

    outcome: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    code: str | None = None  # an in-stream error's code


def endpoint_label(path: str | None) -> str:
    if path in KNOWN_PATHS:
        return path
    return "/v1/models/{model}" if path and path.startswith("/v1/models/") else "other"


def outcome_for_status(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (408, 504):
        return "timeout"
    if status == CLIENT_GONE:
        return "client_gone"
    if status < 500 or status == 503:
        return "rejected"
    return "error"


def outcome_for_event(status: int, code: str | None) -> str:
    """How a generation that ended with an error event ended."""
    if code == "server_shutdown":
        return "cancelled"
    return outcome_for_status(status) if status != 503 else "error"


def record(
    metrics: Metrics,
    *,
    method: str | None,
    path: str | None,
    status: int,
    outcome: str,
    ms: float,
    details: RequestRecord | None = None,
    error: str | None = None,
) -> None:
    metrics.requests.labels(endpoint_label(path), str(status), outcome).inc()
    extra: dict[str, object] = {"method": method, "path": path, "status": status, "outcome": outcome, "ms": ms}
    if details is not None:
        if details.prompt_tokens is not None:
            extra["prompt_tokens"] = details.prompt_tokens
        if details.completion_tokens is not None:
            extra["completion_tokens"] = details.completion_tokens
        if details.code:
            extra["code"] = details.code
    if error:
        extra["error"] = error
    log.log(logging.ERROR if outcome == "error" else logging.INFO, "request", extra=extra)

"""Pure ASGI middleware (so routes still see client disconnects) in front of every route: API keys,
body size, shape and read deadline, and for every request, whatever happened in it, one metric
sample and one JSON log line. An exception nothing else handled becomes an OpenAI-style 500 that is
counted and logged by type and place, never by message (messages can repeat prompt text)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from onnx_server.access import CLIENT_GONE, DOCS_PATHS, OPEN_PATHS, RequestRecord, outcome_for_status, record
from onnx_server.engine import frames
from onnx_server.errors import error_response
from onnx_server.metrics import Metrics
from onnx_server.settings import Settings

log = logging.getLogger("onnx_server.api")
# A body deadline that passes while the loop was held this long looks once more before its 408.
LATE = 0.1


class Draining(Protocol):
    def is_set(self) -> bool: ...
    async def wait(self) -> bool | None: ...


@dataclass(frozen=True)
class _Rejected:
    response: ASGIApp


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, metrics: Metrics, draining: Draining) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.draining = draining

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        details = RequestRecord()
        scope.setdefault("state", {})["record"] = details  # the routes add tokens and outcomes
        sent = {"status": 0, "complete": False}

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                if self.draining.is_set():
                    # The connection closes after this answer: say so, or the client's pool keeps it
                    # and sends its next request into a closed socket.
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                sent["complete"] = True
            await send(message)

        failure: str | None = None
        cancelled = False
        try:
            checked = await self._check(scope, receive)
            if isinstance(checked, _Rejected):
                await checked.response(scope, receive, send_recording)
            else:
                await self.app(scope, checked, send_recording)
        except asyncio.CancelledError:
            cancelled = True  # the server's own shutdown deadline
            raise
        except Exception as error:  # the last line of defence: a JSON 500, counted and logged
            failure = type(error).__name__
            log.error("unhandled error", extra={"path": scope["path"], "error": failure, "frames": frames(error)})
            if not sent["status"]:
                response = error_response(500, "internal server error", "server_error", close=True)
                await response(scope, receive, send_recording)
        finally:
            status = sent["status"] or CLIENT_GONE  # nothing was sent: the client went away first
            if failure:
                outcome = "error"
            elif details.outcome:
                outcome = details.outcome
            elif cancelled:
                outcome = "cancelled"
            elif sent["status"] and not sent["complete"]:
                outcome = "client_gone"  # the answer was cut off mid-way
            else:
                outcome = outcome_for_status(status)
            record(
                self.metrics,
                method=scope["method"],
                path=scope["path"],
                status=status,
                outcome=outcome,
                ms=round((time.perf_counter() - started) * 1000, 1),
                details=details,
                error=failure,
            )

    async def _check(self, scope: Scope, receive: Receive) -> Receive | _Rejected:
        settings = self.settings
        # Header values are bytes; latin-1 decodes any of them (HTTP's own rule), UTF-8 does not.
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        authorizations = [v for k, v in raw_headers if k.lower() == b"authorization"]
        if len(authorizations) > 1:
            message = f"send one Authorization header; this request has {len(authorizations)}"
            return _Rejected(error_response(400, message, param="Authorization", code="duplicate_header"))
        path = scope["path"]
        open_path = path in OPEN_PATHS or (path in DOCS_PATHS and settings.open_docs)
        if not open_path and not settings.allow_unauthenticated and not _authorized(authorizations, settings.api_keys):
            message = "missing or invalid API key (Authorization: Bearer <key>)"
            return _Rejected(error_response(401, message, "authentication_error", code="invalid_api_key"))
        limit = settings.max_body_bytes
        too_large = error_response(413, f"the body is larger than {limit} bytes", close=True)
        lengths = [v for k, v in raw_headers if k.lower() == b"content-length"]
        if lengths and (not lengths[0].isdigit() or int(lengths[0]) > limit):
            return _Rejected(too_large)
        if scope["method"] != "POST" or not path.startswith("/v1/"):
            return receive
        body = await self._read_body(receive, limit)
        if not isinstance(body, bytes):
            return body
        if not body.lstrip().startswith(b"{"):
            return _Rejected(error_response(400, "the body must be a JSON object", code="invalid_json"))
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            message = f"the body is not valid UTF-8 (byte {error.start}); JSON must be UTF-8"
            return _Rejected(error_response(400, message, code="invalid_json"))
        # The body is JSON whatever the client labelled it (curl -d says form-urlencoded).
        scope["headers"] = [(k, v) for k, v in raw_headers if k.lower() != b"content-type"]
        scope["headers"].append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: disconnects reach the route

        return replay

    async def _read_body(self, receive: Receive, limit: int) -> bytes | _Rejected:
        """The whole body within --body-timeout (a slow sender holds nothing for longer), unless
        the server starts draining first."""
        timeout = self.settings.body_timeout
        loop = asyncio.get_running_loop()
        due = loop.time() + timeout
        reader = asyncio.ensure_future(_read_all(receive, limit))
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            done, _ = await asyncio.wait({reader, drain}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done and loop.time() - due > LATE:
                # The deadline passed while the loop was held: the body may be sitting unread.
                done, _ = await asyncio.wait({reader, drain}, timeout=LATE, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        if reader in done:
            return reader.result()
        reader.cancel()
        if drain in done:
            message = "the server is shutting down; retry the request"
            return _Rejected(error_response(503, message, "service_unavailable", code="server_shutdown", close=True))
        message = f"the request body did not arrive within {timeout:g} seconds"
        return _Rejected(error_response(408, message, code="request_timeout", close=True))


async def _read_all(receive: Receive, limit: int) -> bytes | _Rejected:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return _Rejected(error_response(400, "the client went away"))
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return _Rejected(error_response(413, f"the body is larger than {limit} bytes", close=True))
        if not message.get("more_body"):
            return b"".join(chunks)


def _authorized(authorizations: list[bytes], keys: tuple[str, ...]) -> bool:
    if len(authorizations) != 1:
        return False
    scheme, _, token = authorizations[0].partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return False
    presented = token.strip()
    # Compare with every key, in constant time per key, so timing reveals nothing.
    matches = [hmac.compare_digest(presented, key.encode()) for key in keys]
    return any(matches)

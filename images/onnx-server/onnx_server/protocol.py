"""Uvicorn's h11 protocol with what it lacks for a server behind a load balancer:

- a deadline for a request's line and headers: within --header-timeout of their first byte (or of
  the connection, for its first request), so idle and slow-header connections are not held forever;
- connection timers that look at the socket before they close it. When the event loop is held (the
  decode thread holds the GIL through a whole prefill with onnxruntime-genai 0.14.1: seconds on a
  large batch), a timer that came due meanwhile runs before the loop reads what arrived meanwhile:
  uvicorn's keep-alive timer then closed a connection whose next request sat unread in the socket,
  and the client got a reset for a request the server never saw. Here a timer that finds unread
  bytes lets the loop read them first;
- one access log line and metric sample (access.py) for what is refused before the app sees it: a
  408 for late headers, uvicorn's 400 for bytes that are not HTTP.

The idle keep-alive timeout is uvicorn's `timeout_keep_alive` (--keep-alive-timeout); the request
body's deadline is the Guard's."""

from __future__ import annotations

import asyncio
import json
import select
import time
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# (method, path, status, outcome, ms) for a request refused before the app saw it.
Recorder = Callable[[str | None, str | None, int, str, float], None]
SECOND_LOOK = 0.05  # seconds a timer waits for the loop to read bytes it found unread


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request headers did not arrive within {seconds:g} seconds",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _request_line(partial: bytes) -> tuple[str | None, str | None]:
    """Method and path of a request whose headers did not all arrive, if its first line did."""
    line, found, _ = partial.partition(b"\r\n")
    parts = line.split(b" ")
    if not found or len(parts) != 3:
        return None, None
    return parts[0].decode("latin-1"), parts[1].partition(b"?")[0].decode("latin-1")


def _ignore(method: str | None, path: str | None, status: int, outcome: str, ms: float) -> None:
    return None


class TimedH11Protocol(H11Protocol):
    header_timeout = 10.0  # set per server by with_header_timeout()
    recorder: Recorder = staticmethod(_ignore)  # type: ignore[assignment]
    _header_timer: asyncio.TimerHandle | None = None
    _partial = False  # some bytes of the next request have arrived
    _partial_since = 0.0
    _looked_again = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._partial_since = time.perf_counter()
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow(bool(data))

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # The answer went out before the body was read (a 401, a 404): nobody will read the rest,
            # and a client still trickling it must not hold the connection.
            self.transport.close()
            return
        self._follow(False)  # a pipelined request may already be complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        method, path = _request_line(bytes(self.conn.trailing_data[0]))
        super().send_400_response(msg)
        self.recorder(method, path, 400, "rejected", self._elapsed_ms())

    def timeout_keep_alive_handler(self) -> None:
        if self._unread():
            # The client sent its next request while the loop was held: read it, do not reset it.
            # (data_received cancels this timer once the bytes are read.)
            self.timeout_keep_alive_task = self.loop.call_later(SECOND_LOOK, self.timeout_keep_alive_handler)
            return
        super().timeout_keep_alive_handler()

    def _follow(self, received: bool) -> None:
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            # Waiting for a request's headers: the deadline runs from their first byte (uvicorn's
            # keep-alive timer covers the silence before it).
            partial = bool(self.conn.trailing_data[0])
            if partial and not self._partial:
                self._partial_since = time.perf_counter()
            self._partial = partial
            if received and self._header_timer is None:
                self._arm()
        else:
            self._disarm()
            self._partial = False

    def _arm(self) -> None:
        self._disarm()
        self._looked_again = False
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _unread(self) -> bool:
        """Bytes (or the client's close) wait in the socket that the loop has not read yet."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.is_closing():
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    def _elapsed_ms(self) -> float:
        return round((time.perf_counter() - self._partial_since) * 1000, 1)

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._looked_again and self._unread():
            # Once per deadline (a trickling client cannot extend it): let the loop read what
            # arrived while it was held; complete headers disarm this timer.
            self._looked_again = True
            self._header_timer = self.loop.call_later(SECOND_LOOK, self._expired)
            return
        if self._partial:
            method, path = _request_line(bytes(self.conn.trailing_data[0]))
            self.transport.write(_timeout_response(self.header_timeout))
            self.recorder(method, path, 408, "timeout", self._elapsed_ms())
        self.transport.close()


def with_header_timeout(seconds: float, recorder: Recorder | None = None) -> type[TimedH11Protocol]:
    attributes: dict[str, object] = {"header_timeout": seconds}
    if recorder is not None:
        attributes["recorder"] = staticmethod(recorder)
    return type("TimedH11Protocol", (TimedH11Protocol,), attributes)

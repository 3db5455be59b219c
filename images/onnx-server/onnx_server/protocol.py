"""Uvicorn's h11 protocol with the deadline it lacks: a connection's request line and headers must
arrive within --header-timeout of its first byte (or of the connection, for the first request), so
idle and slow-header connections are not held forever. uvicorn closes a kept-alive connection that
sends nothing after `timeout_keep_alive`; the request body's deadline is the Guard's."""

from __future__ import annotations

import asyncio
import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("onnx_server.api")


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


class TimedH11Protocol(H11Protocol):
    header_timeout = 10.0  # set per server by with_header_timeout()
    _header_timer: asyncio.TimerHandle | None = None
    _partial = False  # some bytes of the next request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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

    def _follow(self, received: bool) -> None:
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            # Waiting for a request's headers: the deadline runs from their first byte (uvicorn's
            # keep-alive timer covers the silence before it).
            self._partial = bool(self.conn.trailing_data[0])
            if received and self._header_timer is None:
                self._arm()
        else:
            self._disarm()
            self._partial = False

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._partial:
            log.warning("request headers timed out", extra={"status": 408, "seconds": self.header_timeout})
            self.transport.write(_timeout_response(self.header_timeout))
        self.transport.close()


def with_header_timeout(seconds: float) -> type[TimedH11Protocol]:
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": seconds})

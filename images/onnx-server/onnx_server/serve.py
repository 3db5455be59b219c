"""Uvicorn's server with the shutdown a load balancer expects: on SIGTERM stop accepting, answer 503
to bodies still arriving, let running requests finish until just before the drain deadline, then end
each with an error its client sees (an error event and [DONE] on a stream), and exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Generator

import uvicorn

HANDLED = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, begin_drain: Callable[[], None], end_requests: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._begin_drain = begin_drain
        self._end_requests = end_requests

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._begin_drain()
        grace = self.config.timeout_graceful_shutdown
        ending = None
        if grace is not None:
            # Uvicorn cancels whatever still runs at the deadline, mid-response; end it first.
            margin = min(1.0, grace / 4)
            ending = asyncio.get_running_loop().call_later(grace - margin, self._end_requests)
        try:
            await super().shutdown(sockets)
        finally:
            if ending is not None:
                ending.cancel()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Uvicorn's own re-raises the signal once it has shut down, so a clean drain exits 143;
        # here a handled SIGTERM or SIGINT is a normal stop.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

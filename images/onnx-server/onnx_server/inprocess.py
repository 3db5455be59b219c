"""The server's own engine (engine.py) in the benchmark's process, driven without HTTP.

The same scheduler, sampling, KV cache and text streaming as the server, with the server's
defaults, but none of its per-token HTTP work (waking the event loop, the ASGI and SSE layers, the
socket, the client's parsing). Beside the raw single stream and the server's one client it tells
how much of one client's gap to the raw engine is the engine's and how much is streaming over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from onnx_server.engine import Engine, Job, Sampling
from onnx_server.loadgen import BenchRequest, Outcome
from onnx_server.metrics import Metrics
from onnx_server.settings import Settings

LOAD_SECONDS = 600.0
REQUEST_SECONDS = 600.0


class InProcessEngine:
    def __init__(self, model_dir: Path) -> None:
        self._engine = Engine.from_settings(Settings(model=model_dir), Metrics("in-process"))  # the defaults
        # start() lowers this process's GIL switch interval to the server's (0.5 ms); with one thread
        # busy at a time, as here, the raw engine's loop does not wait on it.
        self._engine.start()
        loaded = self._engine.ready.wait(LOAD_SECONDS)
        if self._engine.load_error or not loaded:
            self._engine.stop()
            raise RuntimeError(f"the engine did not load {model_dir}: {self._engine.load_error or 'timed out'}")

    async def stream(self, request: BenchRequest) -> Outcome:
        """One greedy request, timed as the HTTP client times one: from before tokenizing, TTFT to
        the first text, then each gap between texts."""
        outcome = Outcome()
        started = time.perf_counter()
        prompt_ids = await self._engine.encode(request.prompt)
        job = Job(
            prompt=request.prompt,
            prompt_ids=prompt_ids,
            max_tokens=request.max_tokens,
            sampling=Sampling(temperature=0.0),
            stop=[],
            deadline=started + REQUEST_SECONDS,
            loop=asyncio.get_running_loop(),
        )
        self._engine.submit(job)
        last = started
        async for event in job.events_until_done():
            now = time.perf_counter()
            if event.kind == "delta" and event.text:
                if outcome.ttft is None:
                    outcome.ttft = now - started
                else:
                    outcome.itl.append(now - last)
                last = now
            elif event.kind == "done":
                outcome.tokens = event.completion_tokens
                outcome.e2e = now - started
            elif event.kind != "delta":
                outcome.error = event.code or event.kind
        return outcome

    def close(self) -> None:
        self._engine.stop()

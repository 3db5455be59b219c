"""onnxruntime-genai's Generator in static batches: the engine for models whose genai_config names
the CUDA provider (engine.py says why). A batch forms from the requests waiting when the engine is
free (plus any that arrive within `batch_wait_ms`) and that can share sampling settings, and runs
until every member has finished or gone away. Prompts, text and the events are the engine's
(tokens.py, Engine.emit), as with iteration-level scheduling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx_server.genai import genai
from onnx_server.jobs import Event, Job, frames
from onnx_server.sampling import Sampling
from onnx_server.tokens import TextStream

if TYPE_CHECKING:
    from onnx_server.engine import Engine

log = logging.getLogger("onnx_server.engine")
SEED_RANGE = 1 << 31  # the runtime takes a 32-bit seed; any integer folds into it, reproducibly


def shares_batch(first: Sampling, other: Sampling) -> bool:
    # The Generator samples a batch with one setting and one seed, and guides it with one grammar.
    return first == other and first.seed is None and first.guidance is None


class StaticBatches:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.og = genai()
        config = self.og.Config(str(engine.model_dir))
        options = {"intra_op_num_threads": engine.threads}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = self.og.Model(config)
        self._deferred: deque[Job] = deque()
        self._last_batch = 1

    def run(self, stop: threading.Event) -> None:
        engine = self.engine
        while not stop.is_set():
            batch = self._next_batch()
            if not batch:
                continue
            try:
                self._decode(batch)
                self._last_batch = len(batch)
            except Exception as error:  # one failed batch must not stop the server
                log.error("decoding failed", extra={"error": type(error).__name__, "frames": frames(error)})
                for job in batch:
                    if not job.finished:
                        engine.fail(job, error)
            finally:
                engine.outbox.flush()
                engine.metrics.running.labels(engine.metrics.model).set(0)

    def _take(self, timeout: float) -> Job | None:
        if self._deferred:
            return self._deferred.popleft()
        return self.engine.take(timeout)

    def _next_batch(self) -> list[Job]:
        first = self._take(0.1)
        if first is None:
            return []
        batch = [first]
        # Wait for simultaneous arrivals only under concurrency: a lone client pays no delay.
        busy = self._last_batch > 1 or self.engine.waiting > 0
        deadline = time.perf_counter() + (self.engine.batch_wait if busy else 0.0)
        skipped: list[Job] = []
        while len(batch) < self.engine.max_batch:
            candidate = self._take(max(deadline - time.perf_counter(), 0.0))
            if candidate is None:
                break
            (batch if shares_batch(first.sampling, candidate.sampling) else skipped).append(candidate)
        self._deferred.extendleft(reversed(skipped))
        self.engine.outbox.flush()
        return batch

    def _params(self, batch: list[Job]) -> Any:
        engine = self.engine
        sampling = batch[0].sampling
        max_length = min(engine.context_length, max(len(j.prompt_ids) + j.max_tokens for j in batch))
        options: dict[str, Any] = {"max_length": max_length, "batch_size": len(batch)}
        if sampling.greedy:
            options["do_sample"] = False
        else:
            options |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            # top_k beyond the vocabulary is no limit at all, and crashes the runtime's sampler.
            if sampling.top_k and (not engine.vocab_size or sampling.top_k < engine.vocab_size):
                options["top_k"] = sampling.top_k
        if sampling.seed is not None:
            options["random_seed"] = sampling.seed % SEED_RANGE
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(**options)
        if sampling.guidance is not None:
            params.set_guidance(*sampling.guidance)
        return params

    def _decode(self, batch: list[Job]) -> None:
        engine = self.engine
        metrics, model = engine.metrics, engine.metrics.model
        metrics.batch_size.labels(model).observe(len(batch))
        metrics.running.labels(model).set(len(batch))
        try:
            generator = self.og.Generator(self.model, self._params(batch))
        except RuntimeError as error:
            if batch[0].sampling.guidance is None:
                raise
            # Guidance jobs run alone: a schema the runtime rejects is the client's to fix.
            for job in batch:
                job.finished = "error"
                message = f"response_format could not be applied (with the tools' parameter schemas): {error}"
                engine.outbox.put(job, Event("error", text=message, status=400, code="invalid_response_format"))
            return
        # The ids each request was measured with, right-padded as the tokenizer's encode_batch pads.
        width = max(len(job.prompt_ids) for job in batch)
        padded = np.full((len(batch), width), engine.pad_id, dtype=np.int32)
        for row, job in enumerate(batch):
            padded[row, : len(job.prompt_ids)] = job.prompt_ids
        generator.append_tokens(padded[0] if len(batch) == 1 else padded)
        for job in batch:
            job.stream = TextStream(engine.tokenizer)
            metrics.prompt_tokens.labels(model).inc(len(job.prompt_ids))
        active = len(batch)
        while active and not generator.is_done() and not all(j.finished or j.cancelled.is_set() for j in batch):
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            now = time.perf_counter()
            for index, job in enumerate(batch):
                if not job.finished:
                    engine.emit(job, int(tokens[index]), now)
            engine.outbox.flush()
            active = sum(1 for job in batch if not job.finished)
            metrics.running.labels(model).set(active)
        for job in batch:
            if not job.finished:
                engine.finish(job, "cancelled" if job.cancelled.is_set() else "length")

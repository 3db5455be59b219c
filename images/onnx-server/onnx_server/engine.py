"""The decoding engine: one thread owns the model (onnxruntime-genai is not thread-safe) and decodes
admitted requests in batches, so concurrent requests share forward passes.

A batch forms from the requests waiting when the engine is free (plus any that arrive within
`batch_wait_ms`) and that can share sampling settings; it runs until every member has finished or
gone away. On CPU this beats onnxruntime-genai's Engine API, whose capacity there is 4 requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx_server.cpus import available_cpus
from onnx_server.genai import genai
from onnx_server.metrics import Metrics
from onnx_server.tokens import PromptEncoder

log = logging.getLogger("onnx_server.engine")
# Below this, sampling is greedy decoding (its limit as the temperature goes to 0): the runtime
# divides float32 logits by the temperature, and a denormal one makes them infinite and aborts.
MIN_TEMPERATURE = 1e-6
SEED_RANGE = 1 << 31  # the runtime takes a 32-bit seed; any integer folds into it, reproducibly


def special_tokens(model_dir: Path) -> dict[str, int]:
    """The tokenizer's special tokens, text -> id (from tokenizer.json's added tokens)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    added = json.loads(path.read_text()).get("added_tokens", [])
    return {t["content"]: int(t["id"]) for t in added if t.get("special") and isinstance(t.get("content"), str)}


def frames(error: BaseException) -> list[str]:
    """Where an exception came from, without its message: messages of tokenizer and runtime errors
    repeat their arguments, which may be prompt text."""
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(error.__traceback__)]


class Overloaded(Exception):
    """The admission queue is full."""


class NotReady(Exception):
    """The model is still loading."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    guidance: tuple[str, str] | None = None  # (type, data) for onnxruntime-genai guidance

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1

    def shares_batch_with(self, other: Sampling) -> bool:
        # A seed promises a reproducible sequence and guidance constrains one sequence: alone.
        return self == other and self.seed is None and self.guidance is None


@dataclass(frozen=True)
class Event:
    kind: str  # "delta", "done", "error", "cancelled"
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    status: int = 0
    code: str | None = None


@dataclass(eq=False)
class Job:
    prompt: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: list[str]
    deadline: float
    loop: asyncio.AbstractEventLoop
    markers: tuple[str, ...] = ()  # special tokens to keep in the text (tool-call markers)
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.perf_counter)
    # Engine-thread state.
    generated: int = 0
    finished: str = ""
    held: str = ""
    stream: Any = None
    last_token_at: float = 0.0

    async def events_until_done(self) -> AsyncIterator[Event]:
        """Events in order; text that piled up while the client was busy comes as one delta."""
        pending: Event | None = None
        while True:
            event = pending or await self.events.get()
            pending = None
            if event.kind == "delta":
                texts = [event.text]
                while not self.events.empty():
                    following = self.events.get_nowait()
                    if following.kind != "delta":
                        pending = following
                        break
                    texts.append(following.text)
                event = Event("delta", text="".join(texts))
            yield event
            if event.kind in ("done", "error", "cancelled"):
                return


class Outbox:
    """Events produced during one decoding step, handed to the event loop(s) in one wake-up each."""

    def __init__(self) -> None:
        self._items: list[tuple[Job, Event]] = []

    def put(self, job: Job, event: Event) -> None:
        self._items.append((job, event))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Event]]] = {}
        for job, event in items:
            by_loop.setdefault(job.loop, []).append((job, event))
        for loop, group in by_loop.items():
            loop.call_soon_threadsafe(_deliver, group)


def _deliver(group: list[tuple[Job, Event]]) -> None:
    for job, event in group:
        job.events.put_nowait(event)


class Engine:
    def __init__(
        self,
        model_dir: Path,
        metrics: Metrics,
        *,
        max_batch: int,
        max_waiting: int,
        batch_wait_ms: float,
        threads: int,
    ) -> None:
        self.model_dir = model_dir
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.batch_wait = batch_wait_ms / 1000
        self.threads = threads or available_cpus()
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.context_length = 0
        self.vocab_size = 0
        self.eos_ids: frozenset[int] = frozenset()
        self.pad_id = 0
        self._special_ids: dict[int, str] = {}
        self._og: Any = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self._encoder = PromptEncoder()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._deferred: deque[Job] = deque()
        self._admission = threading.Lock()
        self._waiting = 0
        self._stop = threading.Event()
        self._outbox = Outbox()
        # Label lookups once, not per token.
        self._per_token = metrics.for_model()
        self._last_batch = 1
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        # onnxruntime releases the GIL while it computes, but the decode loop needs it between
        # steps; with the default 5 ms switch interval a busy event loop holds it for a whole token.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._encoder.close()

    def _load(self) -> None:
        og = genai()
        config = og.Config(str(self.model_dir))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": self.threads}}}}))
        self._model = og.Model(config)
        self._tokenizer = og.Tokenizer(self._model)
        self._og = og
        genai_config = json.loads((self.model_dir / "genai_config.json").read_text())["model"]
        self.context_length = int(genai_config["context_length"])
        self.vocab_size = int(genai_config.get("vocab_size", 0))
        eos = genai_config.get("eos_token_id", [])
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.pad_id = int(genai_config.get("pad_token_id", 0))
        special = special_tokens(self.model_dir)
        self._special_ids = {token_id: text for text, token_id in special.items()}
        self._encoder.load(self.model_dir, self._encode, special)
        log.info("model loaded", extra={"model": str(self.model_dir), "threads": self.threads})
        self.ready.set()

    # --- request side (event loop threads) --------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return self._tokenizer.encode(text).tolist()

    async def encode(self, text: str) -> list[int]:
        """Token ids for a prompt, computed off the event loop (tokens.py)."""
        return await self._encoder.encode(text)

    @property
    def waiting(self) -> int:
        return self._waiting

    def submit(self, job: Job) -> None:
        if not self.ready.is_set():
            raise NotReady
        with self._admission:
            if self._waiting >= self.max_waiting:
                raise Overloaded
            self._waiting += 1
            self.metrics.waiting.labels(self.metrics.model).set(self._waiting)
        self._queue.put(job)

    # --- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except Exception as error:  # reported by /ready and the logs; the process stays up
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model failed to load", extra={"error": self.load_error})
            return
        while not self._stop.is_set():
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
                        job.finished = "error"
                        self._outbox.put(
                            job, Event("error", text=f"generation failed: {type(error).__name__}", status=500)
                        )
            finally:
                self._outbox.flush()
                self.metrics.running.labels(self.metrics.model).set(0)

    def _take(self, timeout: float) -> Job | None:
        if self._deferred:
            return self._deferred.popleft()
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _next_batch(self) -> list[Job]:
        first = self._take(0.1)
        if first is None:
            return []
        batch = [first]
        # Wait for simultaneous arrivals only under concurrency: a lone client pays no delay.
        busy = self._last_batch > 1 or not self._queue.empty()
        deadline = time.perf_counter() + (self.batch_wait if busy else 0.0)
        skipped: list[Job] = []
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            candidate = self._take(max(remaining, 0.0)) if remaining > 0 or not self._queue.empty() else None
            if candidate is None:
                break
            (batch if candidate.sampling.shares_batch_with(first.sampling) else skipped).append(candidate)
        self._deferred.extendleft(reversed(skipped))
        with self._admission:
            self._waiting -= len(batch)
            self.metrics.waiting.labels(self.metrics.model).set(self._waiting)
        live = [job for job in batch if not job.cancelled.is_set()]
        for job in batch:
            if job.cancelled.is_set():
                self._finish(job, "cancelled")
        self._outbox.flush()
        return live

    def _params(self, batch: list[Job]) -> Any:
        sampling = batch[0].sampling
        max_length = min(self.context_length, max(len(j.prompt_ids) + j.max_tokens for j in batch))
        options: dict[str, Any] = {"max_length": max_length, "batch_size": len(batch)}
        if sampling.greedy:
            options["do_sample"] = False
        else:
            options |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
            # top_k beyond the vocabulary is no limit at all, and crashes the runtime's sampler.
            if sampling.top_k and (not self.vocab_size or sampling.top_k < self.vocab_size):
                options["top_k"] = sampling.top_k
        if sampling.seed is not None:
            options["random_seed"] = sampling.seed % SEED_RANGE
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(**options)
        if sampling.guidance is not None:
            params.set_guidance(*sampling.guidance)
        return params

    def _decode(self, batch: list[Job]) -> None:
        og = self._og
        metrics, model = self.metrics, self.metrics.model
        metrics.batch_size.labels(model).observe(len(batch))
        metrics.running.labels(model).set(len(batch))
        try:
            generator = og.Generator(self._model, self._params(batch))
        except RuntimeError as error:
            if batch[0].sampling.guidance is None:
                raise
            # Guidance jobs run alone: a schema the runtime rejects is the client's to fix.
            for job in batch:
                job.finished = "error"
                message = f"response_format could not be applied (with the tools' parameter schemas): {error}"
                self._outbox.put(job, Event("error", text=message, status=400, code="invalid_response_format"))
            return
        if len(batch) == 1:
            generator.append_tokens(np.asarray(batch[0].prompt_ids, dtype=np.int32))
        else:
            # The ids each request was measured with, right-padded as the tokenizer's encode_batch
            # pads: no second tokenisation here, where it would hold the GIL between decode steps.
            width = max(len(job.prompt_ids) for job in batch)
            padded = np.full((len(batch), width), self.pad_id, dtype=np.int32)
            for row, job in enumerate(batch):
                padded[row, : len(job.prompt_ids)] = job.prompt_ids
            generator.append_tokens(padded)
        for job in batch:
            job.stream = self._tokenizer.create_stream()
            metrics.prompt_tokens.labels(model).inc(len(job.prompt_ids))
        active = len(batch)
        while active and not generator.is_done() and not self._all_gone(batch):
            generator.generate_next_token()
            tokens = generator.get_next_tokens()
            now = time.perf_counter()
            for index, job in enumerate(batch):
                if not job.finished:
                    self._step(job, int(tokens[index]), now)
            self._outbox.flush()
            active = sum(1 for job in batch if not job.finished)
            metrics.running.labels(model).set(active)
        for job in batch:
            if not job.finished:
                self._finish(job, "cancelled" if job.cancelled.is_set() else "length")

    @staticmethod
    def _all_gone(batch: list[Job]) -> bool:
        return all(job.finished or job.cancelled.is_set() for job in batch)

    def _step(self, job: Job, token: int, now: float) -> None:
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
            return
        if token in self.eos_ids:
            self._finish(job, "stop")
            return
        job.generated += 1
        per_token = self._per_token
        per_token.generation_tokens.inc()
        if job.generated == 1:
            per_token.ttft.observe(now - job.created)
        else:
            per_token.itl.observe(now - job.last_token_at)
        job.last_token_at = now
        special = self._special_ids.get(token)
        # The tokenizer's decoding drops special tokens, tool-call markers included.
        if special is not None and special in job.markers:
            job.held += special
        else:
            job.held += job.stream.decode(token)
        if self._emit_until_stop(job):
            self._finish(job, "stop")
        elif job.generated >= job.max_tokens:
            self._finish(job, "length")
        elif now > job.deadline:
            job.finished = "timeout"
            self._outbox.put(job, Event("error", text="the request timed out", status=504, code="timeout"))

    def _emit_until_stop(self, job: Job) -> bool:
        """Send what can no longer become part of a stop sequence; True when a stop sequence ended it."""
        for stop in job.stop:
            at = job.held.find(stop)
            if at >= 0:
                if at:
                    self._outbox.put(job, Event("delta", text=job.held[:at]))
                job.held = ""
                return True
        keep = max((len(s) - 1 for s in job.stop), default=0)
        cut = len(job.held) - keep
        if cut > 0:
            self._outbox.put(job, Event("delta", text=job.held[:cut]))
            job.held = job.held[cut:]
        return False

    def _finish(self, job: Job, reason: str) -> None:
        job.finished = reason
        if reason == "cancelled":
            # Whoever still waits (a handler whose client left) must stop waiting.
            self._outbox.put(job, Event("cancelled"))
            return
        if job.held:
            self._outbox.put(job, Event("delta", text=job.held))
            job.held = ""
        self.metrics.e2e.labels(self.metrics.model).observe(time.perf_counter() - job.created)
        self.metrics.request_success.labels(self.metrics.model, reason).inc()
        self._outbox.put(job, Event("done", finish_reason=reason, completion_tokens=job.generated))

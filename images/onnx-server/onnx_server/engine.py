"""The decoding engine: one thread owns the model and schedules at every decode step (iteration-
level scheduling), so no request waits for another to finish.

Each iteration of its loop:
1. admits the oldest waiting request into a free KV-cache row (decoder.py; at most `max_batch`
   rows) once its prompt fits the cache's token budget (kv_budget.py), where it prefills alone;
2. spends at most the prefill budget on that prompt, in chunks, and on the next waiting ones while
   the budget lasts: about two decode steps' time by default, at least 20 ms, times one plus the
   requests waiting (at most four times; `prefill_budget_ms` sets a fixed one), so a long prompt
   delays each running stream's next token by about that instead of its whole prefill, and a burst
   of arrivals is not served one prompt per decode step; with nothing running, a prompt runs at once.
   No run is shorter than MIN_CHUNK tokens but a whole short prompt (each run has a fixed cost),
   and the next prompt starts in the same iteration only if its smallest chunk fits what is left;
3. runs one decode step for every running sequence; a prompt that is done joins from the next step.
   Each step's new tokens are reserved first: when they do not fit, the newest sequence gives its
   row back and waits ahead of the queue, to be prefilled again with what it has generated;
4. emits each sequence's token (stop sequences, tool-call markers, max_tokens, deadline,
   cancellation) and frees a finished sequence's row at once.

Every sequence samples on its own (sampling.py, guided_decoding.py), so seeded and guided
requests share the batch: a row's logits are the same as when it runs alone.

Models whose genai_config names the CUDA provider keep onnxruntime-genai's Generator in static
batches (static_batches.py): this decoder binds host memory, and its in-place KV cache and
chunked prefill have been measured on onnxruntime's CPU GroupQueryAttention only.
"""

from __future__ import annotations

import bisect
import logging
import queue
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from onnx_server.cpus import available_cpus
from onnx_server.decoder import SlotDecoder, cpu_session
from onnx_server.guided_decoding import GrammarError, Guide, grammar_tokenizer
from onnx_server.jobs import Event, Job, NotReady, Outbox, Overloaded, frames
from onnx_server.kv_budget import GIB, KvBudget, bytes_per_token, default_capacity_bytes, memory_limit, resident_bytes
from onnx_server.metrics import Metrics
from onnx_server.model_config import ModelConfig, read_model_config
from onnx_server.sampling import MIN_TEMPERATURE, Sampling, TokenChooser
from onnx_server.settings import Settings
from onnx_server.tokens import PromptEncoder, TextStream, load_tokenizer, special_tokens

__all__ = [
    "MIN_TEMPERATURE",
    "Engine",
    "Event",
    "Job",
    "NotReady",
    "Overloaded",
    "Sampling",
    "frames",
    "special_tokens",
]

log = logging.getLogger("onnx_server.engine")
MIN_CHUNK = 16  # prompt tokens per prefill run at least: smaller runs cost more than they bound
# The default budget's floor: on a small model a decode step is a few milliseconds, and a budget of
# one step leaves rows empty while new prompts trickle in (16 clients: 500 tokens/s against 770 with
# 30 ms, tiny model); a pause this short is not visible in a stream.
MIN_DEFAULT_BUDGET = 0.02
# The default budget in decode steps. Every run pays a fixed cost (reading the weights once), so
# each extra chunk a prompt is cut into costs throughput; one step's budget cut the benchmark's
# prompts (16 to 160 tokens) into several chunks each. With two, a modelled closed loop of 16
# clients loses about 3 points less against a raw static batch, for running streams' inter-token
# gap growing from two steps to three while a prompt is prefilled.
PREFILL_STEPS = 2.0
# With requests waiting, the default budget is (1 + waiting) times that, at most this many times: a
# running stream's longest pause is then about 2 x 4 decode steps, during a burst.
QUEUE_SHARE = 4
# A request is admitted beside running ones when the cache has room for its prompt, their next
# step and this share of the cache besides (vLLM keeps 1% of its blocks the same way).
ADMISSION_MARGIN = 0.01
SMOOTHING = 0.2  # weight of the newest measurement in the step and per-token cost averages


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
        spinning: bool = True,
        prefill_budget_ms: float = 0.0,
        max_prefill_chunk: int = 512,
        kv_cache_gib: float = 0.0,
    ) -> None:
        self.model_dir = model_dir
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.batch_wait = batch_wait_ms / 1000  # static batches only
        self.prefill_budget = prefill_budget_ms / 1000  # 0: two decode steps' time
        self.max_prefill_chunk = max(MIN_CHUNK, max_prefill_chunk)
        self.kv_cache_gib = kv_cache_gib  # 0: what the memory limit leaves after loading
        self.kv: KvBudget | None = None  # the CPU decoder's; onnxruntime-genai sizes its own
        # Jobs ahead of the queue, oldest first: preempted ones, and the oldest waiting one while
        # the cache has no room for it. They count as waiting.
        self._front: deque[Job] = deque()
        self.threads = threads or available_cpus()
        self.spinning = spinning  # the CPU decoder's intra-op threads (decoder.cpu_session)
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.context_length = 0
        self.vocab_size = 0
        self.eos_ids: frozenset[int] = frozenset()
        self.pad_id = 0
        self.config: ModelConfig | None = None
        self.tokenizer: Any = None
        self._special_ids: dict[int, str] = {}
        self._encoder = PromptEncoder()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._admission = threading.Lock()
        self._waiting = 0
        self._stop = threading.Event()
        self.outbox = Outbox()
        self._per_token = metrics.for_model()  # label lookups once, not per token or step
        self._decoder: SlotDecoder | None = None
        self._grammar_tokenizer: Any = None
        self._step_seconds = 0.0  # recent decode step time
        self._prefill_token_seconds = 0.0  # recent prefill time per prompt token
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Engine:
        """The engine the server runs for these settings (its model and scheduling options)."""
        return cls(
            settings.model,
            metrics,
            max_batch=settings.max_batch,
            max_waiting=settings.max_waiting,
            batch_wait_ms=settings.batch_wait_ms,
            threads=settings.threads,
            spinning=settings.spinning,
            prefill_budget_ms=settings.prefill_budget_ms,
            kv_cache_gib=settings.kv_cache_gib,
            max_prefill_chunk=settings.max_prefill_chunk,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        # onnxruntime releases the GIL while it computes, but the engine loop needs it between
        # steps; with the default 5 ms switch interval a busy event loop holds it for a whole token.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._encoder.close()

    def _load(self) -> None:
        config = self.config = read_model_config(self.model_dir)
        self.context_length = config.context_length
        self.vocab_size = config.vocab_size
        self.eos_ids = config.eos_ids
        self.pad_id = config.pad_id
        self.tokenizer = load_tokenizer(self.model_dir)
        self._special_ids = {token_id: text for text, token_id in special_tokens(self.model_dir).items()}
        self._encoder.load(self.tokenizer)
        if not config.uses_cuda:
            self._decoder = SlotDecoder(cpu_session(config, self.threads, self.spinning), config, self.max_batch)
            self.kv = self._kv_budget(config)
            self._grammar_tokenizer = grammar_tokenizer(
                self.model_dir / "tokenizer.json", config.vocab_size, config.eos_ids
            )
        loaded: dict[str, object] = {"model": str(self.model_dir), "threads": self.threads}
        if config.uses_cuda:  # onnxruntime-genai configures its own session's threads: no spinning here
            loaded["scheduling"] = "static"
        else:
            loaded |= {"scheduling": "iteration", "spinning": self.spinning}
        log.info("model loaded", extra=loaded)

    def _kv_budget(self, config: ModelConfig) -> KvBudget:
        per_token = bytes_per_token(config.layers, config.kv_heads, config.head_size)
        if self.kv_cache_gib:
            capacity = int(self.kv_cache_gib * GIB)
        else:  # measured after the weights are loaded
            capacity = default_capacity_bytes(memory_limit(), resident_bytes())
        tokens = capacity // per_token
        if tokens < 2:
            raise RuntimeError(
                f"no memory is left for the KV cache ({capacity} bytes; a token needs {per_token}): "
                "raise the memory limit or set --kv-cache-gib"
            )
        log.info(
            "kv cache budget",
            extra={"tokens": tokens, "gib": round(tokens * per_token / GIB, 2), "bytes_per_token": per_token},
        )
        return KvBudget(tokens, per_token)

    # --- request side (event loop threads) --------------------------------------------------

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

    # --- engine thread: shared by both schedulers -------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except Exception as error:  # reported by /ready and the logs; the process stays up
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model failed to load", extra={"error": self.load_error})
            return
        if self._decoder is None:
            from onnx_server.static_batches import StaticBatches  # noqa: PLC0415 (loads onnxruntime-genai)

            loop = StaticBatches(self)
            self.ready.set()
            loop.run(self._stop)
            return
        self.ready.set()
        while not self._stop.is_set():
            self._iterate(self._decoder)

    def _count_waiting(self, change: int) -> None:
        with self._admission:
            self._waiting += change
            self.metrics.waiting.labels(self.metrics.model).set(self._waiting)

    def take(self, timeout: float) -> Job | None:
        """The oldest waiting job (None when none came within `timeout`); it no longer counts as
        waiting. A job cancelled while it waited is finished here."""
        while True:
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return None
            self._count_waiting(-1)
            if not job.cancelled.is_set():
                return job
            self.finish(job, "cancelled")
            timeout = 0

    def fail(self, job: Job, error: BaseException) -> None:
        job.finished = "error"
        self.outbox.put(job, Event("error", text=f"generation failed: {type(error).__name__}", status=500))

    def emit(self, job: Job, token: int, now: float) -> None:
        """A sequence's next token: its text, or the end of the sequence."""
        if job.cancelled.is_set():
            self.finish(job, "cancelled")
            return
        if token in self.eos_ids:
            self.finish(job, "stop")
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
            self.finish(job, "stop")
        elif job.generated >= job.max_tokens:
            self.finish(job, "length")
        elif now > job.deadline:
            job.finished = "timeout"
            self.outbox.put(job, Event("error", text="the request timed out", status=504, code="timeout"))

    def _emit_until_stop(self, job: Job) -> bool:
        """Send what can no longer become part of a stop sequence; True when a stop sequence ended it."""
        if not job.stop:  # the common case, without the search
            if job.held:
                self.outbox.put(job, Event("delta", text=job.held))
                job.held = ""
            return False
        for stop in job.stop:
            at = job.held.find(stop)
            if at >= 0:
                if at:
                    self.outbox.put(job, Event("delta", text=job.held[:at]))
                job.held = ""
                return True
        keep = max((len(s) - 1 for s in job.stop), default=0)
        cut = len(job.held) - keep
        if cut > 0:
            self.outbox.put(job, Event("delta", text=job.held[:cut]))
            job.held = job.held[cut:]
        return False

    def finish(self, job: Job, reason: str) -> None:
        job.finished = reason
        if reason == "cancelled":
            # Whoever still waits (a handler whose client left) must stop waiting.
            self.outbox.put(job, Event("cancelled"))
            return
        if job.held:
            self.outbox.put(job, Event("delta", text=job.held))
            job.held = ""
        self.metrics.e2e.labels(self.metrics.model).observe(time.perf_counter() - job.created)
        self.metrics.request_success.labels(self.metrics.model, reason).inc()
        self.outbox.put(job, Event("done", finish_reason=reason, completion_tokens=job.generated))

    # --- engine thread: iteration-level scheduling ------------------------------------------

    def _iterate(self, decoder: SlotDecoder) -> None:
        try:
            started = time.perf_counter()
            budget = self._prefill_budget()
            # Prompts one after another while the budget lasts: a prompt that waits for the next
            # iteration also waits for its decode step.
            while True:
                self._admit(decoder)
                if decoder.prefilling is None:
                    break
                left = budget - (time.perf_counter() - started) if decoder.running else float("inf")
                self._prefill(decoder, decoder.prefilling, left)
                # The next prompt waits for the next iteration unless its smallest chunk fits what
                # is left: started on a sliver, it would overrun the budget and cost an extra run.
                left = budget - (time.perf_counter() - started)
                if decoder.prefilling is not None or left <= MIN_CHUNK * self._prefill_token_seconds:
                    break
            if decoder.running:
                self._decode(decoder)
        finally:
            self.outbox.flush()
            running = len(decoder.running) + (decoder.prefilling is not None)
            self._per_token.running.set(running)
            if self.kv is not None:
                self._per_token.kv_usage.set(self.kv.usage)

    def _next_job(self, idle: bool) -> Job | None:
        """The oldest job ahead of the queue (preempted, or held for the cache's room), else the
        oldest waiting one."""
        if not idle and not self._waiting:  # nothing waits: no lock to take between decode steps
            return None
        while self._front:
            job = self._front[0]
            if not job.cancelled.is_set():
                return job
            self._front.popleft()
            self._count_waiting(-1)
            self.finish(job, "cancelled")
        return self.take(0.1 if idle else 0)

    def _hold(self, job: Job) -> None:
        """Put a job ahead of the queue, in arrival order; it counts as waiting again."""
        if job in self._front:
            return
        keys = [held.created for held in self._front]
        self._front.insert(bisect.bisect(keys, job.created), job)
        self._count_waiting(1)

    def _unhold(self, job: Job) -> None:
        if job in self._front:
            self._front.remove(job)
            self._count_waiting(-1)

    def _reserve(self, decoder: SlotDecoder, job: Job) -> bool:
        """Reserve what the job's prefill and first decode step write in the KV cache, or hold it
        (first in line, still counted as waiting) until there is room. Running sequences grow a
        token per step and take back the newest one's row when the cache is full (_make_room), so
        a request waits for room its prompt needs now, not for its worst case."""
        assert self.kv is not None
        worst = len(job.prompt_ids) + job.max_tokens
        if worst > self.kv.capacity:  # the request side refuses these; never hold one forever
            self._unhold(job)
            job.finished = "error"
            message = f"the request needs {worst} tokens of KV cache; this server holds {self.kv.capacity}"
            self.outbox.put(job, Event("error", text=message, status=400, code="context_length_exceeded"))
            return False
        # Its prompt; preempted, also the tokens it has sent (the last one is fed in by its next step).
        tokens = len(job.prompt_ids) + len(job.output_ids)
        alone = not decoder.running and decoder.prefilling is None
        # Room for the running rows' next step and a margin besides, so a newcomer is not taken
        # back (its prefill wasted) a few steps later; alone, every request fits (its worst case).
        margin = 0 if alone else len(decoder.running) + int(self.kv.capacity * ADMISSION_MARGIN)
        if not self.kv.fits(tokens + margin):
            self._hold(job)
            return False
        self._unhold(job)
        self.kv.reserve(tokens)
        job.reserved = tokens
        return True

    def _free(self, decoder: SlotDecoder, job: Job) -> None:
        """A sequence leaves: its row and its reservation."""
        decoder.release(job)
        if self.kv is not None:
            self.kv.release(job.reserved)
        job.reserved = 0

    def _admit(self, decoder: SlotDecoder) -> None:
        while decoder.prefilling is None and decoder.free_rows:
            job = self._next_job(idle=not decoder.running)
            if job is None:
                return
            if not self._reserve(decoder, job):
                if job.finished:
                    continue
                return
            # Preempted: its prompt and the tokens it has sent but the last, which the next decode
            # step feeds in as before. Its sampler, grammar and text stream carry on where they were.
            job.prefill_ids = job.prompt_ids + job.output_ids[:-1]
            job.prefilled = 0
            if job.preemptions:
                decoder.begin(job)
                continue
            try:
                job.chooser = TokenChooser(job.sampling, self.vocab_size)
                if job.sampling.guidance is not None:
                    job.guide = Guide(self._grammar_tokenizer, job.sampling.guidance)
            except GrammarError as error:  # a schema llguidance rejects is the client's to fix
                assert self.kv is not None
                self.kv.release(job.reserved)
                job.reserved = 0
                job.finished = "error"
                message = f"response_format could not be applied (with the tools' parameter schemas): {error}"
                self.outbox.put(job, Event("error", text=message, status=400, code="invalid_response_format"))
                continue
            job.stream = TextStream(self.tokenizer)
            self.metrics.prompt_tokens.labels(self.metrics.model).inc(len(job.prompt_ids))
            decoder.begin(job)

    def _chunk(self, remaining: int, budget: float) -> int:
        """Prompt tokens for the next prefill run: what fits the time left, known from recent runs."""
        if budget == float("inf") or not self._prefill_token_seconds:
            size = self.max_prefill_chunk if budget == float("inf") else MIN_CHUNK
        else:
            size = int(budget / self._prefill_token_seconds)
        size = min(max(size, MIN_CHUNK), self.max_prefill_chunk, remaining)
        # A rest shorter than the smallest chunk would cost a run of its own (its fixed cost for
        # little work), and a rest of one token would take attention's decode path, which differs
        # in the last bits from a prompt run: the tokens would then depend on how the prompt was
        # chunked. So this run takes the rest too, or leaves a whole smallest chunk.
        if 0 < remaining - size < MIN_CHUNK:
            size = remaining if remaining <= self.max_prefill_chunk else remaining - MIN_CHUNK
        return size

    def _prefill_budget(self) -> float:
        """Seconds of prefill per iteration. The default grows with the queue (up to QUEUE_SHARE
        times): each waiting prompt also waits for every decode step run before its turn, so a
        burst of arrivals would otherwise see its last first token after one step per chunk of
        every prompt ahead of it."""
        if self.prefill_budget:
            return self.prefill_budget
        base = max(PREFILL_STEPS * self._step_seconds, MIN_DEFAULT_BUDGET)
        return base * min(1 + self._waiting, QUEUE_SHARE)

    def _prefill(self, decoder: SlotDecoder, job: Job, budget: float) -> None:
        """Prefill `job`'s prompt for at most `budget` seconds (infinite: no stream waits, so the
        whole prompt in the largest chunks); at least one chunk."""
        if job.cancelled.is_set():
            self._free(decoder, job)
            self.finish(job, "cancelled")
            return
        started = time.perf_counter()
        logits: np.ndarray | None = None
        try:
            # At least one chunk per iteration, so the prompt progresses whatever the budget.
            ids = job.prefill_ids
            while job.prefilled < len(ids):
                size = self._chunk(len(ids) - job.prefilled, budget - (time.perf_counter() - started))
                run_started = time.perf_counter()
                logits = decoder.prefill(ids[job.prefilled : job.prefilled + size])
                finished_at = time.perf_counter()
                self._prefill_token_seconds = _smooth(self._prefill_token_seconds, (finished_at - run_started) / size)
                job.prefilled += size
                if job.prefilled < len(ids) and finished_at - started >= budget:
                    return
        except Exception as error:  # one failed prompt must not stop the others
            log.error("prefill failed", extra={"error": type(error).__name__, "frames": frames(error)})
            self._free(decoder, job)
            self.fail(job, error)
            return
        assert logits is not None
        decoder.join()
        if job.output_ids:  # back after a preemption: its next token was chosen and sent before
            return
        token = self._choose(job, logits[None, :])
        self.emit(job, token, time.perf_counter())
        self._end_if_finished(decoder, job)
        # The first token goes out now, not after the rest of the iteration: the next prompts'
        # prefill and a decode step of every running row (16 rows: about 100 ms on the large model).
        self.outbox.flush()

    def _choose(self, job: Job, logits: np.ndarray, argmax: int | None = None) -> int:
        """The next token from one row's logits ([1, vocab]), masked by the row's grammar
        (`argmax`: the row's greedy token, computed for the whole batch at once)."""
        if job.guide is not None:
            job.guide.mask(logits)
            token = job.chooser.choose(logits[0])
            job.guide.accept(token)
        elif argmax is not None and job.sampling.greedy:
            token = argmax
        else:
            token = job.chooser.choose(logits[0])
        job.output_ids.append(token)
        return token

    def _end_if_finished(self, decoder: SlotDecoder, job: Job, length: int | None = None) -> None:
        """Finish and free a sequence that is done (`length`: its tokens in the cache, if known)."""
        if not job.finished and job.guide is not None and job.guide.finished:
            self.finish(job, "stop")  # the grammar is complete: only the end of sequence may follow
        if not job.finished and (decoder.length(job) if length is None else length) + 1 >= self.context_length:
            self.finish(job, "length")
        if job.finished:
            self._free(decoder, job)

    def _decode(self, decoder: SlotDecoder) -> None:
        for job in decoder.running:
            if job.cancelled.is_set():
                self._free(decoder, job)
                self.finish(job, "cancelled")
        if self.kv is not None:
            self._make_room(decoder)
        jobs = decoder.running
        if not jobs:
            return
        self._per_token.batch_size.observe(len(jobs))
        started = time.perf_counter()
        try:
            logits = decoder.decode([job.next_token for job in jobs])
            # Every row's token is read before any row is released: a release moves rows.
            argmax = logits.argmax(axis=1).tolist()
            tokens = [self._choose(job, logits[row : row + 1], argmax[row]) for row, job in enumerate(jobs)]
        except Exception as error:  # one failed step must not stop the server
            log.error("decoding failed", extra={"error": type(error).__name__, "frames": frames(error)})
            for job in jobs:
                self._free(decoder, job)
                self.fail(job, error)
            return
        now = time.perf_counter()
        self._step_seconds = _smooth(self._step_seconds, now - started)
        lengths = decoder.lengths  # read once: a row that leaves moves another, not its length
        for job, token, length in zip(jobs, tokens, lengths, strict=True):
            self.emit(job, token, now)
            self._end_if_finished(decoder, job, length)

    def _make_room(self, decoder: SlotDecoder) -> None:
        """Reserve the token each running row writes in this step. When the cache cannot hold them,
        the newest sequence (by arrival; the prefilling one first) gives its row back and waits
        ahead of the queue to be prefilled again with what it has generated (vLLM's preemption by
        recomputation). The oldest always keeps its row: alone, its worst case fits."""
        assert self.kv is not None
        while True:
            running = decoder.running
            growing = [job for job, length in zip(running, decoder.lengths, strict=True) if length >= job.reserved]
            if self.kv.fits(len(growing)):
                break
            candidates = running + ([decoder.prefilling] if decoder.prefilling is not None else [])
            if len(candidates) == 1:  # not expected: alone, a request's worst case fits
                (job,) = candidates
                self._free(decoder, job)
                self.finish(job, "length")
                continue
            self._preempt(decoder, max(candidates, key=lambda job: job.created))
        self.kv.reserve(len(growing))
        for job in growing:
            job.reserved += 1

    def _preempt(self, decoder: SlotDecoder, job: Job) -> None:
        self._free(decoder, job)
        job.preemptions += 1
        self.metrics.preemptions.labels(self.metrics.model).inc()
        self._hold(job)
        log.info(
            "preempted",
            extra={"tokens": len(job.prompt_ids) + len(job.output_ids), "running": len(decoder.running)},
        )


def _smooth(average: float, sample: float) -> float:
    return sample if not average else (1 - SMOOTHING) * average + SMOOTHING * sample

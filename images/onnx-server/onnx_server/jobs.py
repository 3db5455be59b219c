"""A request as the engine sees it (Job), what it sends back (Event), and how events cross from
the engine thread to the event loop (Outbox)."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from onnx_server.sampling import Sampling


class Overloaded(Exception):
    """The admission queue is full."""


class NotReady(Exception):
    """The model is still loading."""


def frames(error: BaseException) -> list[str]:
    """Where an exception came from, without its message: messages of tokenizer and runtime errors
    repeat their arguments, which may be prompt text."""
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(error.__traceback__)]


FINAL = frozenset({"done", "error", "cancelled"})  # the kinds of a job's last event


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
    stream: Any = None  # the text decoder (tokens.TextStream)
    last_token_at: float = 0.0
    prefill_ids: list[int] = field(default_factory=list)  # what its prefill puts in the KV cache
    prefilled: int = 0  # of prefill_ids, already in the KV cache
    reserved: int = 0  # KV-cache tokens held for it: its cache after its next decode step (kv_budget.py)
    output_ids: list[int] = field(default_factory=list)  # every token chosen, in order
    preemptions: int = 0  # times its row was taken back for older requests' growth
    chooser: Any = None  # sampling.TokenChooser
    guide: Any = None  # guided_decoding.Guide, for guided requests
    # Event-loop state: an event read past the deltas that next_event joined.
    _pending: Event | None = field(default=None, init=False, repr=False)

    @property
    def next_token(self) -> int:
        """The token the next decode step feeds in: the last one chosen."""
        return self.output_ids[-1]

    async def next_event(self) -> Event:
        """The next event in order; text that piled up while the client was busy comes as one delta."""
        event = self._pending
        self._pending = None
        if event is None:
            event = self.events.get_nowait() if not self.events.empty() else await self.events.get()
        if event.kind != "delta" or self.events.empty():
            return event
        texts = [event.text]
        while not self.events.empty():
            following = self.events.get_nowait()
            if following.kind != "delta":
                self._pending = following
                break
            texts.append(following.text)
        return Event("delta", text="".join(texts))

    async def events_until_done(self) -> AsyncIterator[Event]:
        """Events in order (next_event) until the last one: done, error or cancelled."""
        while True:
            event = await self.next_event()
            yield event
            if event.kind in FINAL:
                return


class Outbox:
    """Events produced during one engine iteration, handed to the event loop(s) in one wake-up each."""

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

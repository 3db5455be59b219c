"""A job's answer as server-sent events: OpenAI's completion and chat-completion chunks, then
`data: [DONE]`.

One async generator per stream reads the job's events and frames them; Starlette's
StreamingResponse sends its chunks and cancels it when the client goes away. Every layer between
the engine's event and the socket runs on the event loop once per token, beside a decode thread
that needs the same cores, so the path is kept short: no generator per concern, and a text delta
is the chunk's constant JSON around the text's own encoding instead of a new document each time
(16 clients on the large benchmark model: the event loop's CPU per token fell from 118 to 148 us
to 103 to 108 us).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi.responses import StreamingResponse

from onnx_server import schemas
from onnx_server.access import RequestRecord, outcome_for_event
from onnx_server.chat import ToolCallStream
from onnx_server.errors import error_kind
from onnx_server.jobs import Event, Job

DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_event(event: Event) -> bytes:
    return sse({"error": {"message": event.text, "type": error_kind(event.status), "code": event.code}})


def usage(job: Job, completion_tokens: int) -> schemas.Usage:
    prompt_tokens = len(job.prompt_ids)
    return schemas.Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def note(record: RequestRecord, event: Event) -> None:
    """How the generation ended, in the request's record (its access log line)."""
    if event.kind == "done":
        record.completion_tokens = event.completion_tokens
        record.outcome = "ok"
    elif event.kind == "error":
        record.outcome, record.code = outcome_for_event(event.status, event.code), event.code
    elif event.kind == "cancelled":
        record.outcome = "client_gone"


def _template(document: dict[str, Any], marker: str) -> Callable[[str], bytes]:
    """A chunk whose only varying part is one string: `document` with `marker` where it goes,
    encoded once; the string is encoded as json.dumps would within the document."""
    encoded = sse(document)
    quoted = json.dumps(marker).encode()
    before, found, after = encoded.partition(quoted)
    assert found and quoted not in after, "the marker must occur once"

    def chunk(text: str) -> bytes:
        return before + json.dumps(text).encode() + after

    return chunk


class Frames(Protocol):
    def opening(self) -> bytes: ...
    def delta(self, text: str) -> bytes: ...
    def done(self, event: Event) -> bytes: ...


_MARKER = "\x00text\x00"  # where a template's text goes; no completion id or model name holds it


class _Frames:
    """What both endpoints' chunks share: `base` (id, object, created, model) in every chunk, and
    with include_usage a `usage: null` in each and a last chunk with the counts."""

    def __init__(self, job: Job, base: dict[str, Any], include_usage: bool) -> None:
        self._job, self._base, self._include_usage = job, base, include_usage
        self._usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        return {**self._base, "choices": [choice], **self._usage_field}

    def _usage_chunk(self, event: Event) -> bytes:
        if not self._include_usage:
            return b""
        return sse({**self._base, "choices": [], "usage": usage(self._job, event.completion_tokens).model_dump()})


class CompletionFrames(_Frames):
    """/v1/completions chunks (`text_completion`)."""

    def __init__(self, job: Job, base: dict[str, Any], include_usage: bool) -> None:
        super().__init__(job, base, include_usage)
        self._text = _template(self._chunk({"index": 0, "text": _MARKER, "finish_reason": None}), _MARKER)

    def opening(self) -> bytes:
        return b""

    def delta(self, text: str) -> bytes:
        return self._text(text)

    def done(self, event: Event) -> bytes:
        finish = sse(self._chunk({"index": 0, "text": "", "finish_reason": event.finish_reason}))
        return finish + self._usage_chunk(event)


class ChatFrames(_Frames):
    """/v1/chat/completions chunks (`chat.completion.chunk`); with tools, content and tool-call
    deltas are told apart as the text arrives (chat.py)."""

    def __init__(self, job: Job, base: dict[str, Any], include_usage: bool, *, tools: bool, legacy: bool) -> None:
        super().__init__(job, base, include_usage)
        self._legacy = legacy
        self._calls = ToolCallStream(legacy=legacy) if tools else None
        self._content = _template(self._delta_chunk({"content": _MARKER}), _MARKER)

    def _delta_chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return self._chunk({"index": 0, "delta": delta, "finish_reason": finish})

    def _deltas(self, deltas: list[dict[str, Any]]) -> bytes:
        return b"".join(sse(self._delta_chunk(delta)) for delta in deltas)

    def opening(self) -> bytes:
        return sse(self._delta_chunk({"role": "assistant", "content": ""}))

    def delta(self, text: str) -> bytes:
        if self._calls is None:
            return self._content(text)
        return self._deltas(self._calls.feed(text))

    def done(self, event: Event) -> bytes:
        finish = event.finish_reason
        out = b""
        if self._calls is not None:
            out = self._deltas(self._calls.finish())
            if self._calls.called:
                finish = "function_call" if self._legacy else "tool_calls"
        return out + sse(self._delta_chunk({}, finish)) + self._usage_chunk(event)


def stream(job: Job, record: RequestRecord, frames: Frames, in_flight: set[Job]) -> StreamingResponse:
    """The job's events as a stream; whatever ends it (the answer, an error, the client leaving),
    the job is cancelled (a no-op once finished) and leaves `in_flight`."""

    async def chunks() -> AsyncIterator[bytes]:
        try:
            opening = frames.opening()
            if opening:
                yield opening
            while True:
                event = await job.next_event()
                if event.kind == "delta":
                    chunk = frames.delta(event.text)
                    if chunk:
                        yield chunk
                    continue
                note(record, event)
                if event.kind == "error":
                    yield error_event(event)
                elif event.kind == "done":
                    yield frames.done(event)
                break
            yield DONE
        finally:
            job.cancelled.set()
            in_flight.discard(job)

    return StreamingResponse(chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

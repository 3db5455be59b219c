"""The stream's chunk framing (sse.py): a text delta is a template around the text's own JSON
encoding, so for any text it must be byte for byte the chunk json.dumps writes for the whole
document, and parse back to that text with the client's JSON parser."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from onnx_server.jobs import Event, Job
from onnx_server.sampling import Sampling
from onnx_server.sse import ChatFrames, CompletionFrames, sse

HOSTILE = [
    "",
    "plain",
    '"quoted" and \\backslashed\\',
    "line\nbreak\r\n\ttab",
    "\x00text\x00",  # the templates' own marker, as generated text
    "\x00",
    "\u2028\u2029 separators",
    "é ünïcödé 漢字 🤖",
    "data: [DONE]\n\n",
    '}]}, {"injected": true',
]


def _job() -> Job:
    loop = asyncio.new_event_loop()
    try:
        return Job("p", [1, 2, 3], 8, Sampling(), [], 0.0, loop)
    finally:
        loop.close()


def _random_texts(count: int) -> list[str]:
    rng = random.Random(15)  # noqa: S311 (test data)
    alphabet = [chr(c) for c in range(0x20)] + list('"\\/{}[]:,abc') + ["é", "漢", "🤖", "\u2028", "\ud7ff", "\ue000"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(count)]


def _data(chunk: bytes) -> dict[str, object]:
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.count(b"\n\n") == 1
    return json.loads(chunk[len(b"data: ") : -2])


BASE = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m \x00text"}


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_completion_delta_is_the_document_json_writes(include_usage: bool) -> None:
    frames = CompletionFrames(_job(), BASE, include_usage)
    usage = {"usage": None} if include_usage else {}
    for text in HOSTILE + _random_texts(300):
        document = {**BASE, "choices": [{"index": 0, "text": text, "finish_reason": None}], **usage}
        chunk = frames.delta(text)
        assert chunk == sse(document), repr(text)
        assert _data(chunk) == document


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_chat_content_delta_is_the_document_json_writes(include_usage: bool) -> None:
    base = {**BASE, "object": "chat.completion.chunk"}
    frames = ChatFrames(_job(), base, include_usage, tools=False, legacy=False)
    usage = {"usage": None} if include_usage else {}
    for text in HOSTILE + _random_texts(300):
        document = {**base, "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}], **usage}
        assert frames.delta(text) == sse(document), repr(text)


def test_the_last_chunks_carry_the_finish_reason_and_usage() -> None:
    job = _job()
    frames = CompletionFrames(job, BASE, include_usage=True)
    out = frames.done(Event("done", finish_reason="length", completion_tokens=5))
    finish, usage = (json.loads(line[len(b"data: ") :]) for line in out.split(b"\n\n") if line)
    assert finish["choices"] == [{"index": 0, "text": "", "finish_reason": "length"}] and finish["usage"] is None
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

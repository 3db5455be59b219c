"""The ONNX server's OpenAI API, through the official client (sync and async) and raw HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from tests.server_support import API_KEY, Server

pytestmark = pytest.mark.slow
MODEL = "phi3-tiny-int4"


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "the quick brown fox"}], max_tokens=12, temperature=0
    )
    choice = reply.choices[0]
    assert reply.id.startswith("chatcmpl-") and reply.model == MODEL and reply.created > 0
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_greedy_is_deterministic_and_max_completion_tokens_counts(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "kubernetes serving"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=8, temperature=0)  # type: ignore[arg-type]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.usage is not None and first.usage.completion_tokens <= 8


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def sample() -> str | None:
        reply = client.completions.create(
            model=MODEL, prompt="the", max_tokens=10, temperature=1.0, top_p=0.9, seed=7, extra_body={"top_k": 20}
        )
        return reply.choices[0].text

    assert sample() == sample()


def test_completion_and_stop_sequences(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="the quick", max_tokens=20, temperature=0).choices[0].text
    assert full
    stop = full[len(full) // 2 : len(full) // 2 + 2] or full[:1]
    stopped = client.completions.create(model=MODEL, prompt="the quick", max_tokens=20, temperature=0, stop=[stop])
    assert stop not in stopped.choices[0].text
    assert full.startswith(stopped.choices[0].text)
    assert stopped.choices[0].finish_reason == "stop"


def test_streaming_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    full = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=10, temperature=0
    )
    assert text == full.choices[0].message.content
    assert full.usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_tools_go_through_the_chat_template(client: openai.OpenAI) -> None:
    tools: list[Any] = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "weather in paris"}]
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    with_tools = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=tools,
        tool_choice="auto",
        max_tokens=4,
        temperature=0,
    )
    assert plain.usage is not None and with_tools.usage is not None
    # The template rendered the tool definitions into the prompt.
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert with_tools.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_object_output_is_constrained(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "give me json"}],
        response_format={"type": "json_object"},
        max_tokens=12,
        temperature=0,
    )
    assert (reply.choices[0].message.content or "").lstrip().startswith("{")


@pytest.mark.parametrize(
    ("kwargs", "exception", "param"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, "model"),
        ({"n": 2}, openai.BadRequestError, "n"),
        ({"temperature": False}, openai.BadRequestError, "temperature"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs"),
        ({"max_tokens": 100000}, openai.BadRequestError, "max_tokens"),
        ({"extra_body": {"frobnicate": 1}}, openai.BadRequestError, "frobnicate"),
    ],
)
def test_client_errors_raise_the_right_exception(
    client: openai.OpenAI, kwargs: dict, exception: type, param: str
) -> None:
    arguments = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kwargs}
    with pytest.raises(exception) as caught:
        client.chat.completions.create(**arguments)
    body = caught.value.body  # type: ignore[attr-defined]
    assert isinstance(body, dict) and param in (body.get("param") or "") + body.get("message", "")


def test_wrong_key_is_an_authentication_error(server: Server) -> None:
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_async_client(server: Server) -> None:
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)
        replies = await asyncio.gather(
            *(
                client.completions.create(model=MODEL, prompt=f"prompt {i}", max_tokens=6, temperature=0)
                for i in range(4)
            )
        )
        stream = await client.completions.create(model=MODEL, prompt="stream", max_tokens=6, stream=True)
        streamed = [c async for c in stream]
        await client.close()
        assert streamed and streamed[-1].choices[0].finish_reason in ("stop", "length")
        return [r.choices[0].text for r in replies]

    assert len(asyncio.run(run())) == 4


def test_sse_framing(server: Server) -> None:
    body = {"model": MODEL, "prompt": "the", "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream(
        "POST", server.base + "/v1/completions", json=body, headers=server.headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[-1]["usage"]["completion_tokens"] >= 1 and payloads[-1]["choices"] == []
    assert all(p["usage"] is None for p in payloads[:-1])


def test_health_ready_and_metrics_are_open(server: Server) -> None:
    assert httpx.get(server.base + "/health").json() == {"status": "ok"}
    assert httpx.get(server.base + "/ready").json() == {"status": "ready"}
    metrics = httpx.get(server.base + "/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:time_to_first_token_seconds_bucket"):
        assert name in metrics

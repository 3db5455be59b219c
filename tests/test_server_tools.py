"""Tool calling on the real ONNX server, with a chat template that behaves as Phi-4-mini-instruct's
own (tests/data/chat_templates/phi4_mini_instruct.jinja, set as tokenizer_config.json's
chat_template): tool definitions are read only from a `tools` JSON string on the system message.
The tiny random model is made to call a tool by `tool_choice` (guidance); clients are the real
openai client and LangChain's ChatOpenAI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from tests.server_support import API_KEY, Server

pytestmark = pytest.mark.slow
MODEL = "phi4-template-int4"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["paris", "tokyo"]}},
            "required": ["city"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a zone",
        "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]},
    },
}
ASK: list[Any] = [
    {"role": "system", "content": "You answer with tools."},
    {"role": "user", "content": "weather in paris?"},
]


@pytest.fixture(scope="module")
def phi4_server(phi4_template_model: Path) -> Iterator[Server]:
    running = Server(phi4_template_model, "--log-prompts")
    yield running
    running.stop()


@pytest.fixture
def client(phi4_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=phi4_server.base + "/v1", api_key=API_KEY, max_retries=0)


def _prompts(server: Server) -> list[str]:
    prompts = []
    for line in server.log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if "prompt" in entry:
            prompts.append(entry["prompt"])
    return prompts


def _functions(*tools: dict[str, Any]) -> str:
    return json.dumps([tool["function"] for tool in tools], ensure_ascii=False)


def test_tool_definitions_reach_the_system_turn(client: openai.OpenAI, phi4_server: Server) -> None:
    client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], max_tokens=2)  # type: ignore[list-item]
    assert (
        f"<|system|>You answer with tools.<|tool|>{_functions(WEATHER, TIME)}<|/tool|><|end|>"
        in _prompts(phi4_server)[-1]
    )
    # Without a system message, one carries the tools (Phi-4-mini's template has no other place).
    client.chat.completions.create(model=MODEL, messages=ASK[1:], tools=[WEATHER], max_tokens=2)  # type: ignore[list-item]
    assert _prompts(phi4_server)[-1].startswith(f"<|system|><|tool|>{_functions(WEATHER)}<|/tool|><|end|><|user|>")


def test_tools_set_on_the_system_message_are_accepted(client: openai.OpenAI, phi4_server: Server) -> None:
    # Phi-4-mini's model card puts them there, as a JSON string.
    messages: list[Any] = [{**ASK[0], "tools": _functions(WEATHER)}, ASK[1]]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, tool_choice="required", max_tokens=100, seed=0
    )
    assert f"<|tool|>{_functions(WEATHER)}<|/tool|>" in _prompts(phi4_server)[-1]
    calls = reply.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="tools can be set on a system message"):
        client.chat.completions.create(model=MODEL, messages=[{**ASK[1], "tools": "[]"}], max_tokens=2)  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("required", {"get_weather", "get_time"}), ({"type": "function", "function": {"name": "get_time"}}, {"get_time"})],
)
def test_tool_choice_forces_a_call_that_comes_back_as_tool_calls(
    client: openai.OpenAI, choice: Any, expected: set[str]
) -> None:
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice=choice,
            # Parallel calls are allowed: the random model lists up to several calls (32 to 100+
            # tokens over 12 seeds), and the test is about how a finished list comes back.
            max_tokens=400,
            seed=seed,  # type: ignore[list-item]
        )
        choice_out = reply.choices[0]
        assert choice_out.finish_reason == "tool_calls", choice_out
        calls = choice_out.message.tool_calls or []
        assert calls and all(call.function.name in expected for call in calls)  # type: ignore[union-attr]
        for call in calls:
            arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
            assert set(arguments) == ({"city"} if call.function.name == "get_weather" else {"utc"})  # type: ignore[union-attr]
        # The markers survived decoding (they are special tokens): nothing of them is left as text.
        assert not choice_out.message.content


def test_a_named_function_that_is_not_declared_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="'nowhere', which is not among the tools"):
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "nowhere"}},
            max_tokens=4,
        )


def test_a_tool_call_streams_as_deltas(client: openai.OpenAI) -> None:
    # A free (bounded) string: an enum's value would be forced in one step.
    note = {"type": "string", "minLength": 4, "maxLength": 16}
    weather: Any = json.loads(json.dumps(WEATHER))
    weather["function"]["parameters"]["properties"]["note"] = note
    weather["function"]["parameters"]["required"].append("note")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[weather, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=100,
        stream=True,
    )
    headers, fragments, finish = [], [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        for call in delta.tool_calls or []:
            assert call.index == 0
            if call.id:
                headers.append((call.id, call.type, call.function.name if call.function else None))
            if call.function and call.function.arguments:
                fragments.append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert len(headers) == 1 and headers[0][1:] == ("function", "get_weather")
    # The arguments arrive as the model writes them, not in one piece at the end.
    assert len(fragments) > 1, fragments
    assert json.loads("".join(fragments))["city"] in ("paris", "tokyo")


def test_a_tool_result_round_trips_into_the_prompt(client: openai.OpenAI, phi4_server: Server) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=40,  # type: ignore[list-item]
    )
    message = first.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    city = json.loads(call.function.arguments)["city"]  # type: ignore[union-attr]
    conversation: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),  # sent back as the openai client gives it
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=conversation, tools=[WEATHER], max_tokens=4)  # type: ignore[list-item]
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    prompt = _prompts(phi4_server)[-1]
    # The call as the model wrote it, then the result in Phi-4-mini's tool turn.
    written = json.dumps([{"name": "get_weather", "arguments": {"city": city}}])
    assert prompt.endswith(
        f"<|user|>weather in paris?<|end|><|assistant|><|tool_call|>{written}<|/tool_call|><|end|>"
        "<|tool|>sunny, 21 C<|end|><|assistant|>"
    ), prompt


class Weather(pydantic.BaseModel):
    """Weather for a city."""

    city: str = pydantic.Field(max_length=12)  # a bound: a random model can run a string on
    rainy: bool


def test_langchain_function_calling_structured_output(phi4_server: Server) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL,
        base_url=phi4_server.base + "/v1",
        api_key=pydantic.SecretStr(API_KEY),
        max_retries=0,
        max_completion_tokens=100,
    )
    # LangChain names the function in tool_choice: the server must force the call.
    structured = llm.with_structured_output(Weather, method="function_calling")
    for _ in range(2):
        answer = structured.invoke("weather in paris?")
        assert isinstance(answer, Weather)
    assert '"name": "Weather"' in _prompts(phi4_server)[-1]

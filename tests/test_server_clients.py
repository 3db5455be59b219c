"""The ONNX server through the client libraries its users call it with: openai, LangChain's
ChatOpenAI, litellm, llama-index's OpenAILike and the OpenAI Agents SDK. Each sends what it sends
for real: its own parameter names, its own way of sending a conversation back, its own mapping of
error bodies to exceptions. The libraries are imported inside the tests that use them: they are
heavy, and litellm reads its environment at import."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.server_support import API_KEY, Server

# Offline: litellm fetches a model price list at import unless told not to, and the Agents SDK
# uploads traces to OpenAI unless tracing is off.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")

pytestmark = pytest.mark.slow
MODEL = "phi3-tiny-int4"
HELLO: list[Any] = [{"role": "user", "content": "hello there"}]
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HARMLESS: dict[str, Any] = {
    "store": False,
    "metadata": {"team": "search"},
    "service_tier": "auto",
    "reasoning_effort": "minimal",
    "prompt_cache_key": "conversation-1",
    "safety_identifier": "user-1",
    "modalities": ["text"],
    "verbosity": "medium",
}


class Answer(pydantic.BaseModel):
    ok: bool  # a boolean: the tiny random model can run an integer's digits on to max_tokens


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)


def _body(error: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return error.body


# --- 1. harmless parameters are accepted; values we cannot honour are refused by name ------------


def test_openai_client_harmless_parameters_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0, **HARMLESS)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_legacy_functions_are_served_as_tools(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    legacy = client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=4,
        temperature=0,
        functions=[WEATHER_TOOL["function"]],
        function_call="auto",
    )
    assert legacy.choices[0].finish_reason in ("stop", "length", "function_call")
    assert legacy.usage is not None and plain.usage is not None
    assert legacy.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # the template rendered the function


@pytest.mark.parametrize(
    ("kwargs", "param", "why"),
    [
        ({"store": True}, "store", "keeps no completions"),
        ({"service_tier": "flex"}, "service_tier", "one tier"),
        ({"modalities": ["text", "audio"]}, "modalities", "audio output is not supported"),
        ({"functions": [WEATHER_TOOL["function"]], "tools": [WEATHER_TOOL]}, "functions", "not both"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort", "'minimal'"),
    ],
)
def test_values_we_cannot_honour_are_refused_by_name(
    client: openai.OpenAI, kwargs: dict[str, Any], param: str, why: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, **kwargs)
    error = _body(caught.value)
    assert error["param"] == param and why in error["message"], error


def test_langchain_passes_its_parameters_through(server: Server) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL,
        base_url=server.base + "/v1",
        api_key=API_KEY,  # type: ignore[arg-type]
        max_retries=0,
        max_completion_tokens=4,
        temperature=0,
        store=False,
        service_tier="default",
        reasoning_effort="low",
        verbosity="low",
        use_responses_api=False,
        model_kwargs={"prompt_cache_key": "k", "safety_identifier": "u", "modalities": ["text"]},
        metadata={"team": "search"},
    )
    first = chat.invoke("hello there")
    # The conversation goes back with LangChain's own rendering of the assistant turn.
    second = chat.invoke([("human", "hello there"), first, ("human", "and again")])
    assert isinstance(second.content, str)


def test_litellm_passes_its_parameters_through(server: Server) -> None:
    import litellm

    reply: Any = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=server.base + "/v1",
        api_key=API_KEY,
        messages=HELLO,
        max_tokens=4,
        temperature=0,
        num_retries=0,
        reasoning_effort="low",
        service_tier="default",
        store=False,
        prompt_cache_key="k",
        safety_identifier="u",
        modalities=["text"],
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_llama_index_openai_like_with_additional_kwargs(server: Server) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model=MODEL,
        api_base=server.base + "/v1",
        api_key=API_KEY,
        is_chat_model=True,
        context_window=8192,
        max_tokens=4,
        max_retries=0,
        additional_kwargs={"store": False, "service_tier": "auto", "metadata": {"team": "search"}, "n": None},
    )
    first = llm.chat([ChatMessage(role="user", content="hello there")])
    again = llm.chat(
        [ChatMessage(role="user", content="hello there"), first.message, ChatMessage(role="user", content="more")]
    )
    assert again.raw is not None
    completion = llm.complete("the quick brown")
    assert isinstance(completion.text, str)


def _agents_model(server: Server) -> Any:
    from agents import OpenAIChatCompletionsModel, set_tracing_disabled

    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)


def test_agents_sdk_model_settings_go_through(server: Server) -> None:
    from agents import Agent, ModelSettings, Runner
    from openai.types.shared import Reasoning

    settings = ModelSettings(
        max_tokens=4,
        temperature=0,
        store=False,
        metadata={"team": "search"},
        reasoning=Reasoning(effort="low"),
        verbosity="low",
    )
    agent = Agent(name="brief", instructions="Answer briefly.", model=_agents_model(server), model_settings=settings)
    first = Runner.run_sync(agent, "hello there")
    second = Runner.run_sync(agent, [*first.to_input_list(), {"role": "user", "content": "and again"}])
    assert isinstance(second.final_output, str)


# --- 2. OpenAI's own response messages sent back; explicit nulls --------------------------------


def test_an_openai_response_message_can_be_sent_back(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    sent_back: Any = reply.choices[0].message.model_dump()  # refusal, audio, function_call, annotations: None
    assert {"refusal", "audio", "function_call", "annotations"} <= set(sent_back)
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[*HELLO, sent_back, {"role": "user", "content": "more"}],
        max_tokens=4,
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length")


def test_a_parsed_message_can_be_sent_back(client: openai.OpenAI) -> None:
    parsed = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "give me json"}],
        response_format=Answer,
        max_tokens=200,
        temperature=0,
    )
    message = parsed.choices[0].message
    assert isinstance(message.parsed, Answer)
    sent_back: Any = message.model_dump()
    assert "parsed" in sent_back
    follow_up = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "json"}, sent_back, *HELLO], max_tokens=4
    )
    assert follow_up.choices[0].finish_reason in ("stop", "length")


def test_explicit_nulls_mean_the_default(server: Server, client: openai.OpenAI) -> None:
    nulls = {"n": None, "stream": None, "temperature": None, "stop": None, "tools": None, "store": None}
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, extra_body=nulls)
    assert reply.choices[0].finish_reason in ("stop", "length")
    raw = server.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, "n": None, "seed": None})
    assert raw.status_code == 200, raw.text


# --- 3. models.retrieve -------------------------------------------------------------------------


def test_models_retrieve(client: openai.OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert _body(caught.value)["code"] == "model_not_found"


# --- 4. response_format together with tools -----------------------------------------------------


def test_response_format_with_tools_is_a_tool_call_or_conforming_json(client: openai.OpenAI) -> None:
    # Closed choices, so the tiny random model cannot run a free string on to max_tokens.
    city = {"type": "string", "enum": ["paris", "tokyo"]}
    tool = {
        **WEATHER_TOOL,
        "function": {
            **WEATHER_TOOL["function"],
            "parameters": {**WEATHER_TOOL["function"]["parameters"], "properties": {"city": city}},
        },
    }
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    for choice in ("auto", "required"):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "weather in paris"}],
            tools=[tool],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
            response_format=response_format,
            parallel_tool_calls=False,  # one call: the grammar closes the list
            max_tokens=300,
            temperature=0,
        )
        message = reply.choices[0].message
        if reply.choices[0].finish_reason == "tool_calls":
            assert message.tool_calls and message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
            assert json.loads(message.tool_calls[0].function.arguments)["city"] in ("paris", "tokyo")  # type: ignore[union-attr]
        else:
            assert choice == "auto", f"tool_choice required must give a tool call: {reply}"
            if reply.choices[0].finish_reason == "stop":
                assert isinstance(json.loads(message.content or "")["ok"], bool)


def test_agents_sdk_output_type_with_tools(server: Server) -> None:
    from agents import Agent, MaxTurnsExceeded, ModelSettings, Runner, function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return f"sunny in {city}"

    agent = Agent(
        name="structured",
        instructions="Answer with the field ok.",
        model=_agents_model(server),
        model_settings=ModelSettings(max_tokens=200, temperature=0),
        tools=[get_weather],
        output_type=Answer,  # response_format json_schema, sent together with the tools
    )
    try:
        result = Runner.run_sync(agent, "weather in paris", max_turns=3)
    except MaxTurnsExceeded:
        return  # the model kept calling the tool: every request was served
    assert isinstance(result.final_output, Answer)


# --- 5. error wording client libraries map --------------------------------------------------------


def test_context_overflow_maps_to_each_clients_context_error(server: Server, client: openai.OpenAI) -> None:
    import litellm
    from langchain_core.exceptions import ContextOverflowError
    from langchain_openai import ChatOpenAI
    from litellm.exceptions import ContextWindowExceededError

    long: list[Any] = [{"role": "user", "content": "fox " * 9000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=4)
    error = _body(caught.value)
    assert error["code"] == "context_length_exceeded"
    assert error["message"].startswith("This model's maximum context length is 8192 tokens.")

    with pytest.raises(ContextWindowExceededError):
        litellm.completion(
            model=f"openai/{MODEL}", api_base=server.base + "/v1", api_key=API_KEY, messages=long, num_retries=0
        )
    chat = ChatOpenAI(model=MODEL, base_url=server.base + "/v1", api_key=API_KEY, max_retries=0)  # type: ignore[arg-type]
    with pytest.raises(ContextOverflowError):
        chat.invoke("fox " * 9000)


def test_too_many_stop_sequences_says_so(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, stop=["a", "b", "c", "d", "e"])
    error = _body(caught.value)
    assert error["param"] == "stop" and "at most 4 stop sequences" in error["message"], error


def test_an_image_part_says_images_are_not_supported(client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=4)
    error = _body(caught.value)
    assert error["param"] == "messages.0.content.1" and "image_url parts are not supported" in error["message"]
    assert "text only" in error["message"]


def test_a_wrong_type_names_the_field_without_union_tags(server: Server) -> None:
    reply = server.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "stop": 5})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == "stop", error
    assert "valid string" in error["message"] and "valid list" in error["message"]
    assert httpx.get(server.base + "/health").status_code == 200

"""The OpenAI API subset we serve, as strict models: wrong types are errors (`temperature: false`
is refused, not read as 0), unknown parameters are errors, known-but-unsupported ones say so, and
an explicit null means the parameter's default (OpenAI clients send nulls for unset fields)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

# OpenAI parameters we know and do not implement: a request that sets them gets a clear 400.
UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "echo",
    "suffix",
)
MAX_STOP = 4


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        optional = set()
        for name, info in cls.model_fields.items():
            if not info.is_required():
                optional |= {name, info.alias or name}
        return {k: v for k, v in data.items() if v is not None or k not in optional}


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class RefusalPart(_Strict):
    """What an assistant message from OpenAI may carry instead of text."""

    type: Literal["refusal"]
    refusal: str


class MediaPart(BaseModel):
    """Image, audio and file parts: recognised so the answer can say they are not supported."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file"]


Part = Annotated[TextPart | RefusalPart | MediaPart, Field(discriminator="type")]


class FunctionCall(_Strict):
    name: str
    arguments: str


class FunctionCallIn(FunctionCall):
    # `.parse()` adds the decoded arguments; a conversation sent back carries them.
    parsed_arguments: Any = None


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallIn | None = None  # the legacy form of one tool call
    # Phi-4-mini's own convention: tool definitions on the system message, a JSON string (or list).
    tools: str | list[dict[str, Any]] | None = None
    # Fields of OpenAI's own assistant messages (`message.model_dump()`, `.parse()`), accepted when
    # a client sends the conversation back; none of them changes what the model reads.
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None
    audio: dict[str, Any] | None = None
    parsed: Any = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = [p for p in self.content if not isinstance(p, MediaPart)]
            return "".join(p.text if isinstance(p, TextPart) else p.refusal for p in parts)
        return self.content or self.refusal or ""

    @model_validator(mode="after")
    def _tools_on_system_only(self) -> Message:
        if self.tools is not None and self.role not in ("system", "developer"):
            raise ValueError(f"tools can be set on a system message, not on a {self.role} message")
        return self

    def declared_tools(self) -> list[Tool]:
        """The tools set on this (system) message, as request tools."""
        if self.tools is None:
            return []
        try:
            items = json.loads(self.tools) if isinstance(self.tools, str) else self.tools
        except json.JSONDecodeError as error:
            raise ValueError(f"tools on the system message is not JSON: {error}") from None
        if not isinstance(items, list):
            raise ValueError("tools on the system message must be a JSON list of functions")
        tools: list[Tool] = []
        for item in items:
            wrapped = item if isinstance(item, dict) and "function" in item else {"type": "function", "function": item}
            tools.append(Tool.model_validate(wrapped, strict=False))
        return tools

    def media_part(self) -> tuple[int, str] | None:
        """The first image, audio or file part (index, type): this server's model reads text only."""
        if isinstance(self.content, list):
            for index, part in enumerate(self.content):
                if isinstance(part, MediaPart):
                    return index, part.type
        return None


class FunctionSpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format type json_schema needs a json_schema object")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise PydanticCustomError(
                "too_many_stop_sequences",
                "at most {limit} stop sequences are allowed, this request has {count}",
                {"limit": MAX_STOP, "count": len(stop)},
            )
        return stop

    def refused(self) -> tuple[str, str] | None:
        """(parameter, why) for the first parameter whose value this server cannot honour."""
        if self.n != 1:
            return "n", "only n=1 is supported"
        for name in UNSUPPORTED:
            value = getattr(self, name, None)
            if value not in (None, False, 0, {}):
                return name, f"parameter {name!r} is not supported by this server"
        return None

    def stop_list(self) -> list[str]:
        # One rule for "" and [""]: an empty stop sequence stops nothing.
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # The legacy form of tools: served as tools, answered as `function_call`.
    functions: Annotated[list[FunctionSpec], Field(min_length=1)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # Accepted and without effect here: hints, bookkeeping and the defaults of features we lack.
    store: bool | None = None
    metadata: Annotated[dict[str, Annotated[str, Field(max_length=512)]], Field(max_length=16)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None

    def refused(self) -> tuple[str, str] | None:
        if self.store:
            return "store", "store: true is not supported: this server keeps no completions (omit it or send false)"
        if self.service_tier not in (None, "auto", "default"):
            return "service_tier", (
                f"service_tier {self.service_tier!r} is not offered: this server has one tier ('auto' or 'default')"
            )
        if self.modalities is not None and "audio" in self.modalities:
            return "modalities", 'audio output is not supported: modalities can only be ["text"]'
        if self.functions is not None and self.tools is not None:
            return "functions", "send tools or the legacy functions, not both"
        return super().refused()

    @model_validator(mode="after")
    def _system_tools_parse(self) -> ChatCompletionRequest:
        for index, message in enumerate(self.messages):
            try:
                message.declared_tools()
            except (ValueError, ValidationError) as error:
                raise ValueError(f"messages.{index}.tools: {error}") from None
        return self

    def tool_list(self) -> list[Tool] | None:
        if self.functions is not None:
            return [Tool(type="function", function=f) for f in self.functions]
        if self.tools is not None:
            return self.tools
        # Tools a client set on the system message, as Phi-4-mini's own examples do.
        declared = [tool for message in self.messages for tool in message.declared_tools()]
        return declared or None

    def tool_choice_value(self) -> str | NamedToolChoice | None:
        if self.functions is not None and self.function_call is not None:
            if isinstance(self.function_call, NamedFunction):
                return NamedToolChoice(type="function", function=self.function_call)
            return self.function_call
        return self.tool_choice


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    best_of: int | None = None
    echo: bool | None = None
    suffix: str | None = None

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls", "function_call"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "slm-serving"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str

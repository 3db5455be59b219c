"""vLLM tool parser for Phi-4-mini's own tool-call format, loaded with `--tool-parser-plugin`.

Phi-4-mini writes `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>` (the markers are
special tokens, so the parser asks vLLM to keep them); vLLM's built-in `phi4_mini_json` looks for
`functools[...]` instead. The parsing is plain functions (`extract`, `stream_delta`) that need no
vLLM; the class adapts them to vLLM 0.12's ToolParser interface and exists only where vLLM does.
"""

# No `from __future__ import annotations`: vLLM loads this file without registering it in
# sys.modules, and dataclasses then cannot resolve string annotations.
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PARSER_NAME = "phi4_mini_markers"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"


def _arguments_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass
class PartialCall:
    """One tool call as far as the text goes: its name once complete, its arguments' JSON so far."""

    name: str | None = None
    arguments: str = ""  # the raw JSON text of the arguments value, growing
    arguments_done: bool = False

    def streamable_arguments(self) -> str:
        """What of the arguments can be sent now: an object's text as it grows; an arguments value
        written as a JSON string only once complete, decoded."""
        if not self.arguments.startswith('"'):
            return self.arguments
        if not self.arguments_done:
            return ""
        try:
            decoded = json.loads(self.arguments)
        except json.JSONDecodeError:
            return ""
        return decoded if isinstance(decoded, str) else ""


def _held_marker(text: str) -> int:
    """How many trailing characters could begin the tool-call marker (held back from content)."""
    for size in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


def scan_tool_calls(text: str, *, final: bool = False) -> tuple[str, list[PartialCall]]:
    """Content that can be sent and the tool calls so far, from text that may be cut anywhere.
    Each result extends the one for any prefix of `text`, so a stream sends the difference."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        held = 0 if final else _held_marker(text)
        return text[: len(text) - held], []
    body = start + len(TOOL_CALL_OPEN)
    end = text.find(TOOL_CALL_CLOSE, body)
    calls = _scan_region(text[body:] if end < 0 else text[body:end])
    if end < 0:
        return text[:start], calls
    rest_content, rest_calls = scan_tool_calls(text[end + len(TOOL_CALL_CLOSE) :], final=final)
    return text[:start] + rest_content, calls + rest_calls


def _scan_region(region: str) -> list[PartialCall]:
    """Calls in `[{"name": ..., "arguments": {...}}, ...]` or one such object, possibly unfinished."""
    stripped = region.lstrip()
    if not stripped:
        return []
    scanner = _Scanner(region, level=2 if stripped[0] == "[" else 1)
    for index, char in enumerate(region):
        scanner.step(index, char)
    return scanner.done()


class _Scanner:
    """A JSON walk that notes, for each call object at `level`, its name and arguments text."""

    def __init__(self, region: str, level: int) -> None:
        self.region, self.level = region, level  # level: the depth at which a call's own keys sit
        self.calls: list[PartialCall] = []
        self.current: PartialCall | None = None
        self.depth, self.in_string, self.escaped, self.string_start = 0, False, False, 0
        self.key: Any = None
        self.pending_key: str | None = None
        self.value_start: int | None = None
        self.expecting_key = False

    def step(self, index: int, char: str) -> None:
        if self.in_string:
            self._string(index, char)
        elif char == '"':
            self.in_string, self.string_start = True, index
        elif char in "{[":
            self.depth += 1
            if self.depth == self.level and char == "{":
                self.current = PartialCall()
                self.calls.append(self.current)
                self.expecting_key, self.value_start, self.pending_key = True, None, None
        elif char in "}]":
            if self.depth == self.level and self.current is not None:
                self._close_value(index)
                self.current = None
            self.depth -= 1
        elif self.depth == self.level and self.current is not None:
            self._punctuation(index, char)

    def _string(self, index: int, char: str) -> None:
        if self.escaped:
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_string = False
            if self.depth == self.level and self.expecting_key:
                self.pending_key = self.region[self.string_start : index + 1]

    def _punctuation(self, index: int, char: str) -> None:
        if char == ":" and self.expecting_key and self.pending_key is not None:
            self.key, self.value_start, self.expecting_key = _arguments_value(self.pending_key), index + 1, False
        elif char == ",":
            self._close_value(index)
            self.expecting_key, self.pending_key = True, None

    def _close_value(self, until: int) -> None:
        if self.value_start is None or self.current is None:
            return
        raw = self.region[self.value_start : until].strip()
        self.value_start = None
        if self.key == "name":
            name = _arguments_value(raw)
            self.current.name = name if isinstance(name, str) else None
        elif self.key in ("arguments", "parameters"):
            self.current.arguments, self.current.arguments_done = raw, True

    def done(self) -> list[PartialCall]:
        if self.current is not None and self.value_start is not None and self.key in ("arguments", "parameters"):
            self.current.arguments = self.region[self.value_start :].strip()
        return self.calls


def _as_call(item: Any) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return None
    function = item.get("function", item)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        return None
    arguments = function.get("arguments", function.get("parameters", {}))
    return name, arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def extract(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments JSON)]) from a whole answer; text without a valid call is all content."""
    calls: list[tuple[str, str]] = []
    content, rest = "", text
    while (start := rest.find(TOOL_CALL_OPEN)) >= 0:
        content += rest[:start]
        body = rest[start + len(TOOL_CALL_OPEN) :]
        end = body.find(TOOL_CALL_CLOSE)
        payload, rest = (body, "") if end < 0 else (body[:end], body[end + len(TOOL_CALL_CLOSE) :])
        try:
            decoded = json.loads(payload.strip())
        except json.JSONDecodeError:
            return text, []
        for item in decoded if isinstance(decoded, list) else [decoded]:
            call = _as_call(item)
            if call is not None:
                calls.append(call)
    if not calls:
        return text, []
    return (content + rest).strip(), calls


@dataclass
class Delta:
    content: str = ""
    # (index, name when the call first appears, arguments fragment)
    calls: tuple[tuple[int, str | None, str], ...] = ()


def stream_delta(previous_text: str, current_text: str) -> Delta:
    """What `current_text` adds to `previous_text`: content, new calls' names, arguments fragments."""
    old_content, old_calls = scan_tool_calls(previous_text)
    new_content, new_calls = scan_tool_calls(current_text)
    named_before = _named(old_calls)
    parts: list[tuple[int, str | None, str]] = []
    for index, call in enumerate(new_calls[: _named(new_calls)]):
        sent = old_calls[index].streamable_arguments() if index < named_before else ""
        arguments = call.streamable_arguments()
        name = call.name if index >= named_before else None
        if name is not None or len(arguments) > len(sent):
            parts.append((index, name, arguments[len(sent) :]))
    return Delta(new_content[len(old_content) :], tuple(parts))


def _named(calls: list[PartialCall]) -> int:
    """How many leading calls have their name (a call is announced with its name)."""
    count = 0
    while count < len(calls) and calls[count].name is not None:
        count += 1
    return count


try:  # vLLM's interface: only inside the vLLM image
    from vllm.entrypoints.openai.protocol import (  # pyright: ignore[reportMissingImports]
        ChatCompletionRequest,
        DeltaFunctionCall,
        DeltaMessage,
        DeltaToolCall,
        ExtractedToolCallInformation,
        FunctionCall,
        ToolCall,
    )
    from vllm.entrypoints.openai.tool_parsers.abstract_tool_parser import (  # pyright: ignore[reportMissingImports]
        ToolParser,
        ToolParserManager,
    )
except ImportError:
    pass
else:

    @ToolParserManager.register_module(PARSER_NAME)
    class Phi4MiniMarkersToolParser(ToolParser):  # pyright: ignore[reportUntypedBaseClass]
        def __init__(self, tokenizer: Any) -> None:
            super().__init__(tokenizer)
            self.ids: list[str] = []

        def adjust_request(self, request: Any) -> Any:
            if request.tools and request.tool_choice != "none":
                request.skip_special_tokens = False  # the markers are special tokens
            return request

        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            content, calls = extract(model_output)
            return ExtractedToolCallInformation(
                tools_called=bool(calls),
                tool_calls=[
                    ToolCall(type="function", function=FunctionCall(name=name, arguments=arguments))
                    for name, arguments in calls
                ],
                content=content or None,
            )

        def extract_tool_calls_streaming(  # noqa: PLR0917 (vLLM's signature)
            self,
            previous_text: str,
            current_text: str,
            delta_text: str,
            previous_token_ids: Sequence[int],
            current_token_ids: Sequence[int],
            delta_token_ids: Sequence[int],
            request: Any,
        ) -> Any:
            delta = stream_delta(previous_text, current_text)
            calls = []
            for index, name, fragment in delta.calls:
                if name is not None:
                    self.ids.append(f"call_{uuid.uuid4().hex[:24]}")
                    self.prev_tool_call_arr.append({"name": name, "arguments": {}})
                    self.streamed_args_for_tool.append("")
                self.streamed_args_for_tool[index] += fragment
                self.current_tool_id = index
                function = (
                    DeltaFunctionCall(name=name, arguments=fragment) if name else DeltaFunctionCall(arguments=fragment)
                )
                calls.append(
                    DeltaToolCall(
                        index=index,
                        id=self.ids[index] if name else None,
                        type="function" if name else None,
                        function=function,
                    )
                )
            if not delta.content and not calls:
                return None
            return DeltaMessage(content=delta.content or None, tool_calls=calls)

    __all__ = ["ChatCompletionRequest", "Phi4MiniMarkersToolParser"]

"""vLLM tool parser for Phi-4-mini's own tool-call format, loaded with `--tool-parser-plugin`.

The file vLLM loads is images/onnx-server/onnx_server/tool_markers.py (the markup scanner the ONNX
server streams with) followed by this adapter; infra/backends/vllm.py joins them at render time.

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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time these come first in the same file (tool_markers.py, joined before this)
    from onnx_server.tool_markers import (
        TOOL_CALL_CLOSE,
        TOOL_CALL_OPEN,
        PartialCall,
        scan_tool_calls,
    )

PARSER_NAME = "phi4_mini_markers"


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

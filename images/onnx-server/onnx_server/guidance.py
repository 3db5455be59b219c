"""What onnxruntime-genai's guidance (llguidance) is asked to enforce for a chat request.

`response_format` alone is a JSON schema. With tools as well, the answer is either a tool call in
the model's own markers or JSON that fits the format (OpenAI allows both together): a Lark
grammar with two branches, the tool call's JSON constrained to the declared tools. `tool_choice`
"required" or a named function leaves only the tool-call branch, with or without a format.
"""

from __future__ import annotations

import json
from typing import Any

from onnx_server import schemas
from onnx_server.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

Guidance = tuple[str, str]
# Compact JSON unless the schema says otherwise: llguidance's default admits any whitespace, and a
# small model can spend its whole max_tokens on tabs before the first key.
COMPACT = {"whitespace_flexible": False}


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    return schema if "x-guidance" in schema else {**schema, "x-guidance": COMPACT}


def _answer_schema(response_format: schemas.ResponseFormat) -> dict[str, Any]:
    if response_format.type == "json_object":
        return {"type": "object"}
    assert response_format.json_schema is not None  # ResponseFormat validates it
    return response_format.json_schema.schema_ or {"type": "object"}


def _closed(parameters: dict[str, Any] | None) -> dict[str, Any]:
    # Keys beyond the declared ones are no use to the caller, and a small model can run a stray
    # key's string on to max_tokens: closed unless the schema says otherwise.
    schema = parameters or {"type": "object"}
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def _calls_schema(tools: list[schemas.Tool], only: str | None, parallel: bool) -> dict[str, Any]:
    choices = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.function.name},
                "arguments": _closed(tool.function.parameters),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
        if only is None or tool.function.name == only
    ]
    calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": choices}}
    return calls if parallel else {**calls, "maxItems": 1}


def _marker(text: str, special: set[str]) -> str:
    # A special token is written <|name|> in Lark (llguidance); plain text is a quoted string.
    return text if text in special else json.dumps(text)


def for_chat(
    response_format: schemas.ResponseFormat | None,
    tools: list[schemas.Tool] | None,
    tool_choice: str | schemas.NamedToolChoice | None,
    special_tokens: set[str],
    *,
    parallel_tool_calls: bool = True,
) -> Guidance | None:
    only = tool_choice.function.name if isinstance(tool_choice, schemas.NamedToolChoice) else None
    forced = bool(tools) and (tool_choice == "required" or only is not None)
    formatted = response_format is not None and response_format.type != "text"
    if not formatted and not forced:
        return None
    if not tools:
        assert response_format is not None
        return ("json_schema", json.dumps(_compact(_answer_schema(response_format))))
    calls = json.dumps(_compact(_calls_schema(tools, only, parallel_tool_calls)))
    call = f"calls: {_marker(TOOL_CALL_OPEN, special_tokens)} %json {calls} {_marker(TOOL_CALL_CLOSE, special_tokens)}"
    if forced:
        return ("lark_grammar", f"start: calls\n{call}\n")
    assert response_format is not None
    answer = _compact(_answer_schema(response_format))
    return ("lark_grammar", f"start: answer | calls\nanswer: %json {json.dumps(answer)}\n{call}\n")

"""Phi-4-mini's tool-call markup read from text that may be cut anywhere (a stream): the content
that can be sent and the calls so far. Standard library only, and no `from __future__` import: the
same source is the core of the tool parser the stack ships to vLLM (infra/backends/vllm.py joins it
with vLLM's adapter), which vLLM loads without registering it as a module.
"""

import json
from dataclasses import dataclass
from typing import Any

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"


def arguments_value(text: str) -> Any:
    """A call's arguments as JSON when they parse, else the text as written."""
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
            self.key, self.value_start, self.expecting_key = arguments_value(self.pending_key), index + 1, False
        elif char == ",":
            self._close_value(index)
            self.expecting_key, self.pending_key = True, None

    def _close_value(self, until: int) -> None:
        if self.value_start is None or self.current is None:
            return
        raw = self.region[self.value_start : until].strip()
        self.value_start = None
        if self.key == "name":
            name = arguments_value(raw)
            self.current.name = name if isinstance(name, str) else None
        elif self.key in ("arguments", "parameters"):
            self.current.arguments, self.current.arguments_done = raw, True

    def done(self) -> list[PartialCall]:
        if self.current is not None and self.value_start is not None and self.key in ("arguments", "parameters"):
            self.current.arguments = self.region[self.value_start :].strip()
        return self.calls

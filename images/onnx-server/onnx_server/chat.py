"""Prompts from chat messages (the model's own chat template, tools included) and tool calls from
the model's output, whole or as it streams.

Templates take tool definitions one of two ways: a top-level `tools` variable (Hugging Face's
convention), or, as Phi-4-mini's own template does, a `tools` JSON string on the system message
(`<|system|>...<|tool|>[...]<|/tool|><|end|>`), which ignores the variable. The template's source
says which it reads.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Phi-4-mini wraps tool calls in these markers; the JSON inside is one call or a list of calls.
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<|tool_call|>", "<|/tool_call|>"
TOOL_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


class TemplateFailure(ValueError):
    """The chat template rejected the conversation (a client error)."""


def load_template(model_dir: Path) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's chat_template."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _raise(message: str) -> None:
    raise TemplateFailure(message)


class ChatTemplate:
    def __init__(self, source: str | None, special: dict[str, str]) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.policies["json.dumps_kwargs"] = {"ensure_ascii": False}
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source) if source else None
        self.special = special
        # A template that never names the variable reads tools from the system message.
        self.tools_variable = bool(source) and "tools" in meta.find_undeclared_variables(env.parse(source or ""))
        # A template that never names tool_calls drops them: they go into the content, as the model wrote them.
        self.renders_tool_calls = bool(source) and "tool_calls" in (source or "")

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        if self.template is None:
            # No template shipped: a plain transcript the model can continue.
            lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
            return "\n".join([*lines, "assistant:"])
        messages = [self._prepared(m) for m in messages]
        variable = tools
        if tools and not self.tools_variable:
            messages, variable = on_system_message(messages, tools), None
        try:
            return self.template.render(messages=messages, tools=variable, add_generation_prompt=True, **self.special)
        except TemplateFailure:
            raise
        except (TemplateError, TypeError, KeyError, AttributeError) as error:
            raise TemplateFailure(f"the chat template could not render these messages: {error}") from None

    def _prepared(self, message: dict[str, Any]) -> dict[str, Any]:
        calls = message.get("tool_calls")
        if not calls or self.renders_tool_calls:
            return message
        written = [
            {"name": c["function"]["name"], "arguments": _arguments_value(c["function"]["arguments"])} for c in calls
        ]
        content = (message.get("content") or "") + TOOL_CALL_OPEN + json.dumps(written, ensure_ascii=False)
        return {**message, "content": content + TOOL_CALL_CLOSE}


def _arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def tools_json(tools: list[dict[str, Any]]) -> str:
    """Tool definitions as Phi-4-mini reads them: a JSON list of the functions."""
    return json.dumps([tool.get("function", tool) for tool in tools], ensure_ascii=False)


def on_system_message(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools as a JSON string on the system message (one is added first if there is none)."""
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "tools": first.get("tools") or tools_json(tools)}, *messages[1:]]
    return [{"role": "system", "content": "", "tools": tools_json(tools)}, *messages]


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Split generated text into plain content and OpenAI tool calls."""
    calls: list[dict[str, Any]] = []
    for match in TOOL_CALL.finditer(text):
        try:
            payload = json.loads(match.group(1).strip())
        except json.JSONDecodeError:
            continue
        for item in payload if isinstance(payload, list) else [payload]:
            if not isinstance(item, dict):
                continue
            function = item.get("function", item)
            name = function.get("name")
            if not isinstance(name, str):
                continue
            arguments = function.get("arguments", function.get("parameters", {}))
            calls.append(
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
    if not calls:
        return text, []
    return TOOL_CALL.sub("", text).strip(), calls


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


@dataclass
class ToolCallStream:
    """Turns generated text, piece by piece, into OpenAI chat-completion deltas: content as it
    comes, then each tool call's id and name, then its arguments in fragments. The legacy
    `functions` form streams the first call as `function_call`."""

    legacy: bool = False
    text: str = ""
    content_sent: int = 0
    ids: list[str] = field(default_factory=list)
    arguments_sent: list[int] = field(default_factory=list)

    @property
    def called(self) -> bool:
        return bool(self.ids)

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        return self._deltas(final=False)

    def finish(self) -> list[dict[str, Any]]:
        deltas = self._deltas(final=True)
        content, calls = parse_tool_calls(self.text)
        if not calls and not self.ids:
            # No call after all (e.g. the JSON never became valid): the text is the answer.
            rest = self.text[self.content_sent :]
            self.content_sent = len(self.text)
            return deltas + ([{"content": rest}] if rest else [])
        del content
        for index, call in enumerate(calls):
            if index >= len(self.ids):  # a call in a form the scanner does not follow: sent whole
                deltas.append(self._header(index, call["function"]["name"], call["id"]))
                deltas.append(self._fragment(index, call["function"]["arguments"]))
        return [d for d in deltas if d]

    def _deltas(self, *, final: bool) -> list[dict[str, Any]]:
        content, calls = scan_tool_calls(self.text, final=final)
        deltas: list[dict[str, Any]] = []
        if len(content) > self.content_sent:
            deltas.append({"content": content[self.content_sent :]})
            self.content_sent = len(content)
        for index, call in enumerate(calls):
            if index >= len(self.ids):
                if call.name is None or index > len(self.ids):
                    break
                deltas.append(self._header(index, call.name, f"call_{uuid.uuid4().hex[:24]}"))
            arguments = call.streamable_arguments()
            if len(arguments) > self.arguments_sent[index]:
                deltas.append(self._fragment(index, arguments[self.arguments_sent[index] :]))
        return [d for d in deltas if d]

    def _header(self, index: int, name: str, call_id: str) -> dict[str, Any]:
        self.ids.append(call_id)
        self.arguments_sent.append(0)
        if self.legacy:
            return {"function_call": {"name": name, "arguments": ""}} if index == 0 else {}
        function = {"name": name, "arguments": ""}
        return {"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": function}]}

    def _fragment(self, index: int, fragment: str) -> dict[str, Any]:
        self.arguments_sent[index] += len(fragment)
        if self.legacy:
            return {"function_call": {"arguments": fragment}} if index == 0 else {}
        return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}

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

from onnx_server.tool_markers import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, arguments_value, scan_tool_calls

# Phi-4-mini wraps tool calls in these markers; the JSON inside is one call or a list of calls.
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
            {"name": c["function"]["name"], "arguments": arguments_value(c["function"]["arguments"])} for c in calls
        ]
        content = (message.get("content") or "") + TOOL_CALL_OPEN + json.dumps(written, ensure_ascii=False)
        return {**message, "content": content + TOOL_CALL_CLOSE}


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

"""Prompts from chat messages (the model's own chat template, tools included) and tool calls from
the model's output."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
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

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        if self.template is None:
            # No template shipped: a plain transcript the model can continue.
            lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
            return "\n".join([*lines, "assistant:"])
        try:
            return self.template.render(messages=messages, tools=tools, add_generation_prompt=True, **self.special)
        except TemplateFailure:
            raise
        except (TemplateError, TypeError, KeyError, AttributeError) as error:
            raise TemplateFailure(f"the chat template could not render these messages: {error}") from None


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

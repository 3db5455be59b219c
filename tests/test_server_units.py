"""The ONNX server's pure parts: chat templates, tool-call parsing, settings, CPU sizing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from onnx_server.chat import ChatTemplate, TemplateFailure, parse_tool_calls
from onnx_server.cpus import available_cpus
from onnx_server.settings import parse

from convert.tiny_model import CHAT_TEMPLATE


def test_template_renders_tools_and_the_generation_prompt() -> None:
    template = ChatTemplate(CHAT_TEMPLATE, {})
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = template.render([{"role": "user", "content": "weather?"}], tools)
    assert prompt.endswith("<|assistant|>")
    assert '"get_weather"' in prompt and "<|tool|>" in prompt
    assert "<|tool|>" not in template.render([{"role": "user", "content": "hi"}], None)


def test_template_errors_are_client_errors() -> None:
    template = ChatTemplate("{{ raise_exception('only user and assistant roles') }}", {})
    with pytest.raises(TemplateFailure, match="only user and assistant"):
        template.render([{"role": "system", "content": "x"}], None)


def test_tool_calls_are_parsed_into_openai_shape() -> None:
    text = 'Sure. <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
    content, calls = parse_tool_calls(text)
    assert content == "Sure."
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}


def test_unfinished_or_invalid_tool_calls_stay_text() -> None:
    assert parse_tool_calls("<|tool_call|>{not json") == ("<|tool_call|>{not json", [])
    assert parse_tool_calls("plain answer") == ("plain answer", [])
    _, calls = parse_tool_calls('<|tool_call|>{"function": {"name": "f", "arguments": "{}"}}')
    assert calls[0]["function"] == {"name": "f", "arguments": "{}"}


def test_every_flag_has_an_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONNX_SERVER_MODEL", str(tmp_path))
    monkeypatch.setenv("ONNX_SERVER_PORT", "9001")
    monkeypatch.setenv("ONNX_SERVER_MAX_BATCH", "4")
    monkeypatch.setenv("ONNX_SERVER_API_KEYS", "a, b")
    settings = parse([])
    assert (settings.model, settings.port, settings.max_batch, settings.api_keys) == (tmp_path, 9001, 4, ("a", "b"))
    assert parse(["--port", "9002"]).port == 9002  # the flag wins over the environment


def test_threads_follow_the_container_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))

"""Tool calling on vLLM: the chat template and tool parser the stack ships (infra/backends/vllm_files/)
and how both targets hand them to vLLM.

vLLM itself cannot be installed here, so these stand in for its server: the template is rendered by
transformers' own chat-template renderer (the Jinja environment vLLM renders HF templates with)
and compared with Phi-4-mini-instruct's template (tests/data/chat_templates/) given the tools the
way that template reads them; the parser module is loaded from its file as `--tool-parser-plugin`
loads it, and its pure functions are fed Phi-4-mini-shaped outputs, whole and in token pieces.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from onnx_server.chat import ChatTemplate
from transformers.utils.chat_template_utils import render_jinja_template

from infra.backends import vllm
from tests.test_compose import interpolated, render, vllm_serve
from tests.test_serving_manifests import one, pod_spec

FILES = Path(vllm.__file__).parent / "vllm_files"
PHI4_MINI = (Path(__file__).parent / "data" / "chat_templates" / "phi4_mini_instruct.jinja").read_text()
OURS = (FILES / "chat_template.jinja").read_text()
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city — in °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_time", "description": "Local time", "parameters": {"type": "object"}},
}
EOS = "<|end|>"  # Phi-4-mini's end-of-turn token
FLAGS = (
    f"--chat-template {vllm.FILES_MOUNT}/chat_template.jinja --enable-auto-tool-choice "
    f"--tool-parser-plugin {vllm.FILES_MOUNT}/phi4_tool_parser.py --tool-call-parser phi4_mini_markers"
)


def _render(template: str, messages: list[dict[str, Any]], tools: list[Any] | None = None) -> str:
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=template, add_generation_prompt=True, eos_token=EOS
    )
    return rendered[0]


def _functions(*tools: dict[str, Any]) -> str:
    return json.dumps([tool["function"] for tool in tools], ensure_ascii=False)


def _plugin(tmp: Path | None = None) -> ModuleType:
    # The file the stack ships, loaded as vLLM's ToolParserManager.import_tool_parser loads a plugin.
    folder = Path(tempfile.mkdtemp()) if tmp is None else tmp
    path = folder / vllm.TOOL_PARSER_FILE
    path.write_text(vllm.files()[vllm.TOOL_PARSER_FILE])
    spec = importlib.util.spec_from_file_location("phi4_tool_parser", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the template --------------------------------------------------------------------------------


@pytest.mark.parametrize("system", [True, False])
def test_template_writes_tools_into_the_system_turn_as_phi4_mini_does(system: bool) -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    head = [{"role": "system", "content": "You are helpful."}] if system else []
    ours = _render(OURS, [*head, *turns], tools=[WEATHER, TIME])
    # Phi-4-mini's own template, given the tools where it reads them (it ignores the variable).
    system_turn = {**(head[0] if head else {"role": "system", "content": ""}), "tools": _functions(WEATHER, TIME)}
    assert ours == _render(PHI4_MINI, [system_turn, *turns])
    assert ours.startswith(f'<|system|>{"You are helpful." if system else ""}<|tool|>[{{"name": "get_weather"')
    assert "Weather for a city — in °C" in ours  # not escaped: the model reads the text as written
    # Without tools, both render the same plain conversation.
    assert _render(OURS, [*head, *turns]) == _render(PHI4_MINI, [*head, *turns]) == _render(OURS, [*head, *turns], [])


def test_tools_set_on_the_system_message_are_kept() -> None:
    messages = [{"role": "system", "content": "sys", "tools": _functions(TIME)}, {"role": "user", "content": "hi"}]
    assert _render(OURS, messages) == _render(PHI4_MINI, messages)


def test_a_tool_round_trip_renders_as_on_the_onnx_server() -> None:
    """vLLM hands an assistant's tool-call arguments to the template decoded; the ONNX server renders
    the same conversation with Phi-4-mini's template: one prompt on both servers."""
    asked = [{"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    vllm_side = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    sent = {**call, "function": {**call["function"], "arguments": json.dumps(call["function"]["arguments"])}}
    onnx_side = [*asked, {"role": "assistant", "content": "", "tool_calls": [sent]}, vllm_side[-1]]
    ours = _render(OURS, vllm_side, tools=[WEATHER])
    assert ours == ChatTemplate(PHI4_MINI, {}).render(onnx_side, [WEATHER])
    assert ours.endswith(
        '<|assistant|><|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|><|end|>'
        "<|tool|>sunny<|end|><|assistant|>"
    )


# --- the parser ----------------------------------------------------------------------------------

# What Phi-4-mini writes (markers are special tokens, kept in the text by the parser's request).
ONE = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
TWO = (
    'Let me check. <|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris, FR", "days": [1, 2]}}, '
    '{"name": "get_time", "parameters": {"zone": "Europe/Paris"}}]<|/tool_call|>'
)


def test_parser_extracts_phi4_mini_calls() -> None:
    plugin = _plugin()
    assert plugin.extract(ONE) == ("", [("get_weather", '{"city": "Paris"}')])
    content, calls = plugin.extract(TWO)
    assert content == "Let me check."
    assert [(n, json.loads(a)) for n, a in calls] == [
        ("get_weather", {"city": "Paris, FR", "days": [1, 2]}),
        ("get_time", {"zone": "Europe/Paris"}),
    ]
    # One object instead of a list; a call whose arguments are already a JSON string.
    assert plugin.extract('<|tool_call|>{"name": "f", "arguments": "{\\"a\\": 1}"}<|/tool_call|>') == (
        "",
        [("f", '{"a": 1}')],
    )
    for text in ("plain answer", "<|tool_call|>[{not json", 'functools[{"name": "f", "arguments": {}}]'):
        assert plugin.extract(text) == (text, [])


def _pieces(text: str) -> list[str]:
    """Text cut as a tokenizer would send it: each marker whole, the rest a few characters at a time."""
    pieces: list[str] = []
    marked = text.replace("<|/tool_call|>", "\0<|/tool_call|>\0").replace("<|tool_call|>", "\0<|tool_call|>\0")
    for part in marked.split("\0"):
        if part.startswith("<|"):
            pieces.append(part)
        else:
            pieces += [part[i : i + 3] for i in range(0, len(part), 3)]
    return [p for p in pieces if p]


def test_parser_streams_names_then_argument_fragments() -> None:
    plugin = _plugin()
    previous, content, names, arguments, deltas = "", "", {}, {}, 0
    for piece in _pieces(TWO):
        current = previous + piece
        delta = plugin.stream_delta(previous, current)
        content += delta.content
        for index, name, fragment in delta.calls:
            if name is not None:
                assert index not in names, "a call is announced once"
                names[index] = name
            assert index in names, "arguments come after the call's name"
            arguments[index] = arguments.get(index, "") + fragment
            deltas += 1
        previous = current
    assert content == "Let me check. "
    assert names == {0: "get_weather", 1: "get_time"}
    assert json.loads(arguments[0]) == {"city": "Paris, FR", "days": [1, 2]}
    assert json.loads(arguments[1]) == {"zone": "Europe/Paris"}
    assert deltas > 10  # fragments as they come, not one piece at the end


def test_parser_registers_only_inside_vllm() -> None:
    plugin = _plugin()
    assert plugin.PARSER_NAME == vllm.TOOL_PARSER == "phi4_mini_markers"
    assert not hasattr(plugin, "Phi4MiniMarkersToolParser")  # vLLM is not installed here


# --- how the targets hand them to vLLM -----------------------------------------------------------


def test_deployment_mounts_the_files_and_passes_the_flags(rendered: Any) -> None:
    rec = rendered("prod")
    spec = pod_spec(one(rec, "Deployment", "vllm"))
    container = spec["containers"][0]
    assert FLAGS in container["command"][-1]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == vllm.FILES_MOUNT)
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = one(rec, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"] == vllm.files()


def test_compose_service_mounts_the_files_and_passes_the_flags() -> None:
    document = interpolated(render())
    service = document["services"]["vllm"]
    assert FLAGS in shlex.join(vllm_serve(service))
    targets = {m["target"]: document["configs"][m["source"]]["content"] for m in service["configs"]}
    assert targets == {f"{vllm.FILES_MOUNT}/{name}": text for name, text in vllm.files().items()}


def test_one_tool_call_scanner_serves_both_servers() -> None:
    """The parser vLLM loads carries the ONNX server's own scanner, not a copy of it."""
    from onnx_server import tool_markers

    shipped = vllm.files()[vllm.TOOL_PARSER_FILE]
    assert shipped.startswith(Path(tool_markers.__file__).read_text())
    text = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
    assert [(c.name, c.arguments) for c in _plugin().scan_tool_calls(text, final=True)[1]] == [
        (c.name, c.arguments) for c in tool_markers.scan_tool_calls(text, final=True)[1]
    ]

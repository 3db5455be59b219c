"""Shared fixtures: run the real program for a stack file (optionally with config overrides) under
the recording mock, in known-outputs or preview mode."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.config import NAMESPACE
from offline import recording
from offline.render import PLACEHOLDER, read_stack_config
from tests.server_support import Server

STACKS = ("dev", "prod", "local")

RunStack = Callable[..., recording.Recording]


def run_stack(
    stack: str,
    overrides: dict[str, Any] | None = None,
    remove: tuple[str, ...] = (),
    preview: bool = False,
) -> recording.Recording:
    """Run the program for Pulumi.<stack>.yaml; `overrides` replaces whole keys (short names)."""
    stack_file = read_stack_config(stack)
    config = dict(stack_file.config)
    for key in remove:
        config.pop(f"{NAMESPACE}:{key}", None)
    for key, value in (overrides or {}).items():
        config[f"{NAMESPACE}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    rec = recording.run(stack, config, stack_file.secret_keys, preview=preview)
    assert not rec.duplicates, f"duplicate URNs: {rec.duplicates}"
    return rec


def stack_value(stack: str, key: str) -> Any:
    raw = read_stack_config(stack).config[f"{NAMESPACE}:{key}"]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


_cache: dict[tuple[str, bool], recording.Recording] = {}


@pytest.fixture
def rendered() -> Callable[[str, bool], recording.Recording]:
    """Recordings of the unmodified stack files, shared within a worker."""

    def get(stack: str, preview: bool = False) -> recording.Recording:
        if (stack, preview) not in _cache:
            _cache[(stack, preview)] = run_stack(stack, preview=preview)
        return _cache[(stack, preview)]

    return get


__all__ = ["PLACEHOLDER", "STACKS", "run_stack", "stack_value"]


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Phi3ForCausalLM with a locally trained tokenizer (built once per worker)."""
    from convert.tiny_model import build

    return build(tmp_path_factory.mktemp("tiny") / "phi3-tiny")


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted to cpu-int4, with a long context so a generation can be made to last."""
    from convert.tiny_model import TinySpec, build

    root = tmp_path_factory.mktemp("served")
    return _int4(build(root / "source", TinySpec(context=8192)), root / "phi3-tiny-int4")


@pytest.fixture(scope="session")
def tiny_int4(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (512-token context) converted to cpu-int4 with the builder."""
    return _int4(tiny_source, tmp_path_factory.mktemp("tiny-int4") / "phi3-tiny-int4")


def _int4(source: Path, out: Path) -> Path:
    command = ["-m", "convert", "--model", str(source), "--method", "builder", "--out", str(out), "--no-compare"]
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def server(served_model: Path) -> Iterator[Server]:
    """A real ONNX server process on 127.0.0.1 serving the tiny model (one per test module)."""
    running = Server(served_model)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def endless_model(served_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served model with no end-of-sequence token: every generation runs to max_tokens, so a test
    can make one last as long as it needs (a random model may otherwise stop at any step)."""
    out = tmp_path_factory.mktemp("endless") / "phi3-tiny-int4"
    shutil.copytree(served_model, out)
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["eos_token_id"] = [config["model"]["vocab_size"] + 1]  # an id the model cannot produce
    config_path.write_text(json.dumps(config))
    return out


PHI4_MINI_TEMPLATE = Path(__file__).parent / "data" / "chat_templates" / "phi4_mini_instruct.jinja"


@pytest.fixture(scope="session")
def phi4_template_model(served_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served model with Phi-4-mini-instruct's chat template, shipped where Phi-4-mini ships it
    (tokenizer_config.json's chat_template): tools are read from the system message only."""
    out = tmp_path_factory.mktemp("phi4-template") / "phi4-template-int4"
    shutil.copytree(served_model, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)  # the server would prefer it
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = PHI4_MINI_TEMPLATE.read_text()
    config_path.write_text(json.dumps(config))
    return out

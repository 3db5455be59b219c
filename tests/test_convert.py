"""The conversion step end to end on a tiny random Phi3 (built here, nothing downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx_server.decoder import SlotDecoder, cpu_session
from onnx_server.model_config import read_model_config
from transformers import AutoModelForCausalLM

from convert import errors, manifest, source
from convert.genai import genai
from convert.key import TOOLCHAIN
from convert.pipeline import Request, convert
from convert.verify import FP32_MAX_LOGIT_DIFF, PROMPTS
from offline.recording import PROJECT_ROOT

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convert", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.partial-*"))


@pytest.fixture(scope="session")
def converted(tiny_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache: dict[tuple[str, str], Path] = {}

    def get(method: str, target: str) -> Path:
        if (method, target) not in cache:
            out = tmp_path_factory.mktemp("converted") / f"{method}-{target}"
            result = run_cli("--model", str(tiny_source), "--target", target, "--method", method, "--out", str(out))
            assert result.returncode == 0, result.stderr[-2000:]
            cache[(method, target)] = out
        return cache[(method, target)]

    return get


@pytest.mark.parametrize("method", ["olive", "builder"])
@pytest.mark.parametrize("target", ["cpu-int4", "cpu-fp32"])
def test_conversion_contract(converted: Any, tiny_source: Path, method: str, target: str) -> None:
    out = converted(method, target)
    data = manifest.read(out)
    assert data is not None
    for field in ("key", "source", "revision", "target", "precision", "toolchain", "tool_versions", "created"):
        assert data[field] not in (None, ""), field
    assert "block_size" in data and "accuracy_level" in data
    assert data["source"] == str(tiny_source) and data["target"] == target and data["method"] == method
    assert data["tool_versions"]["onnxruntime-genai"] == TOOLCHAIN["onnxruntime-genai"]
    if method == "olive":
        assert data["tool_versions"]["olive-ai"] == TOOLCHAIN["olive-ai"]
    names = {f["name"] for f in data["files"]}
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= names
    assert names == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "conversion.json"}
    assert manifest.intact(out, data, check_hashes=True)

    checks = data["verification"]
    assert checks["generation"]["tokens"] > 0
    comparison = checks["comparison"]
    assert comparison["positions"] > 0 and 0.0 <= comparison["top1_agreement"] <= 1.0
    if target == "cpu-fp32":
        assert comparison["max_logit_diff"] <= FP32_MAX_LOGIT_DIFF
        assert comparison["top1_agreement"] == 1.0
        assert data["block_size"] is None  # not quantized
    else:
        assert data["precision"] == "int4" and data["block_size"] == 32 and data["accuracy_level"] == 4


def test_the_result_loads_and_generates(converted: Any) -> None:
    og = genai()
    model = og.Model(str(converted("builder", "cpu-int4")))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("the quick brown fox"))
    steps = 0
    while not generator.is_done():
        generator.generate_next_token()
        steps += 1
    assert steps > 0


@pytest.mark.parametrize("method", ["olive", "builder"])
def test_cpu_decoders_compute_logits_for_the_last_position_only(converted: Any, method: str) -> None:
    out = converted(method, "cpu-fp32")
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim][1] == 1
    # The converter still compares every prompt position with PyTorch (prefix by prefix).
    comparison = manifest.read(out)["verification"]["comparison"]  # type: ignore[index]
    assert comparison["positions"] > len(PROMPTS) and comparison["top1_agreement"] == 1.0
    assert comparison["max_logit_diff"] <= FP32_MAX_LOGIT_DIFF


def test_the_servers_decoder_generates_what_pytorch_does_from_a_pruned_head(converted: Any, tiny_source: Path) -> None:
    """The ONNX server's decoder on the pruned fp32 model, the prompt prefilled in two chunks, against
    transformers' greedy generate on the source model."""
    config = read_model_config(converted("builder", "cpu-fp32"))
    prompt = [int(t) for t in np.random.default_rng(4).integers(5, config.vocab_size - 5, 40)]
    decoder = SlotDecoder(cpu_session(config, 1), config, rows=2)
    decoder.begin("a")
    decoder.prefill(prompt[:24])
    tokens = [int(np.argmax(decoder.prefill(prompt[24:])))]
    decoder.join()
    while len(tokens) < 12:
        tokens.append(int(np.argmax(decoder.decode([tokens[-1]])[0])))
    source: Any = AutoModelForCausalLM.from_pretrained(tiny_source, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = source.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert tokens == expected[0, len(prompt) :].tolist()


def test_second_run_is_a_no_op(converted: Any, tiny_source: Path) -> None:
    out = converted("builder", "cpu-fp32")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = run_cli("--model", str(tiny_source), "--target", "cpu-fp32", "--method", "builder", "--out", str(out))
    assert result.returncode == 0
    assert json.loads(result.stdout)["status"] == "unchanged"
    assert "up to date" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_different_key_converts_again_only_with_force(converted: Any, tiny_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(converted("builder", "cpu-int4"), out)
    old_key = manifest.read(out)["key"]  # type: ignore[index]
    args = ["--model", str(tiny_source), "--method", "builder", "--block-size", "64", "--out", str(out)]
    refused = run_cli(*args)
    assert refused.returncode == errors.OutputConflict.exit_code
    assert "--force" in refused.stderr and old_key in refused.stderr
    assert manifest.read(out)["key"] == old_key  # type: ignore[index]

    forced = run_cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    data = manifest.read(out)
    assert data is not None and data["key"] != old_key and data["block_size"] == 64
    assert not leftovers(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_run_leaves_nothing_that_looks_complete(tiny_source: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-m", "convert", "--model", str(tiny_source), "--method", "olive", "--out", str(out)],
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not leftovers(out) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the conversion
    assert process.poll() is None, "conversion finished before it could be interrupted"
    process.send_signal(sig)
    process.wait(timeout=60)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert not leftovers(out), "SIGTERM must clean up the scratch folder"
    # The next run clears what a killed run left and converts.
    result = run_cli("--model", str(tiny_source), "--method", "builder", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not leftovers(out) and manifest.read(out) is not None


# Loaded by the conversion's interpreter (sitecustomize): the signal lands in a frame that does not
# let the handler's exception through, as a C++ frame of torch's or onnxruntime's bindings does
# (pybind11 then aborts the process). A stand-in for where an interruption really lands, which a
# test cannot aim at.
_SWALLOWING_METHOD = """
import time

from convert import methods


def swallowing(source_dir, target, out, work, **options):
    (work / "started").touch()
    try:
        time.sleep(60)
    except BaseException:
        pass  # carries on as if nothing had happened


methods.METHODS["olive"] = swallowing
"""


def _scratch_file(out: Path, name: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not any((folder / name).exists() for folder in leftovers(out)):
        assert time.monotonic() < deadline and process.poll() is None, "the conversion never got there"
        time.sleep(0.02)


def test_sigterm_stops_the_conversion_even_where_an_exception_could_not_unwind(
    tiny_source: Path, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SWALLOWING_METHOD)
    out = tmp_path / "model"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(PROJECT_ROOT)])}
    command = [sys.executable, "-m", "convert", "--model", str(tiny_source), "--method", "olive", "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _scratch_file(out, "started", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "interrupted by SIGTERM" in stderr
    assert not out.exists() and not leftovers(out)


# Loaded by the conversion's interpreter (sitecustomize): SIGTERM arrives the moment the model
# builder's process exists, before the converter has its Popen back (a window a test cannot aim at).
_SIGNAL_AT_SPAWN = """
import os
import signal
import subprocess


class SignalledPopen(subprocess.Popen):
    def __init__(self, command, *args, **kwargs):
        super().__init__(command, *args, **kwargs)
        if "onnxruntime_genai.models.builder" in command:
            os.kill(os.getpid(), signal.SIGTERM)


subprocess.Popen = SignalledPopen
"""


def _builders_running(scratch: Path) -> list[bytes]:
    cmdlines = (p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists())
    return [cmdline for cmdline in cmdlines if str(scratch).encode() in cmdline]


@pytest.mark.parametrize("when", ["while it runs", "as it starts"])
def test_sigterm_during_the_model_builder_stops_it_too(tiny_source: Path, tmp_path: Path, when: str) -> None:
    out = tmp_path / "model"
    env = dict(os.environ)
    if when == "as it starts":
        hooks = tmp_path / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(_SIGNAL_AT_SPAWN)
        env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(PROJECT_ROOT)])
    command = [sys.executable, "-m", "convert", "--model", str(tiny_source), "--method", "builder", "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if when == "while it runs":
        _scratch_file(out, "builder.log", process)  # opened just before the builder's process starts
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert not out.exists() and not leftovers(out)
    assert not _builders_running(out.parent / f".{out.name}.partial-{process.pid}"), "the model builder still runs"


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_model_not_found(tmp_path: Path) -> None:
    out = tmp_path / "model"
    line = _one_line_error(
        run_cli("--model", str(tmp_path / "nope"), "--out", str(out)), errors.ModelNotFound.exit_code
    )
    assert "no such folder" in line
    assert not out.exists() and not leftovers(out)


def test_unsupported_architecture_names_the_supported_ones(tiny_source: Path, tmp_path: Path) -> None:
    model = tmp_path / "gpt2"
    shutil.copytree(tiny_source, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    out = tmp_path / "model"
    line = _one_line_error(run_cli("--model", str(model), "--out", str(out)), errors.UnsupportedArchitecture.exit_code)
    assert "GPT2LMHeadModel" in line and "Phi3ForCausalLM" in line and "LlamaForCausalLM" in line
    assert not out.exists()


def test_unknown_target_lists_the_valid_ones(tiny_source: Path, tmp_path: Path) -> None:
    result = run_cli("--model", str(tiny_source), "--target", "tpu-int2", "--out", str(tmp_path / "m"))
    line = _one_line_error(result, errors.UsageError.exit_code)
    assert "cpu-int4, cpu-fp32, cuda-int4, cuda-fp16" in line


def test_not_enough_disk(tiny_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=1 << 20))
    with pytest.raises(errors.NotEnoughDisk, match="not enough disk space"):
        convert(Request(out=out, model=str(tiny_source), method="builder"), log=lambda _: None)
    assert not out.exists() and not leftovers(out)


def test_gated_model_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub

    def gated(*_: object, **__: object) -> None:
        response = type("Response", (), {"status_code": 401, "headers": {}, "request": None, "url": ""})()
        raise hub.GatedRepoError("Access to model is restricted", response=response)  # type: ignore[arg-type]

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setattr(HfApi, "model_info", gated)
    with pytest.raises(errors.GatedModel, match="gated and no token is set"):
        source.resolve("some-org/gated-model", None)


def test_hub_failures_never_print_the_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("hf_SECRETSECRETSECRET\n")
    result = run_cli(
        "--model",
        "no-such-org/no-such-model",
        "--out",
        str(tmp_path / "m"),
        env={"HF_TOKEN_PATH": str(token_file), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "hf_SECRET" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_token_is_read_from_the_file_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from convert.hf_auth import hf_token

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("HF_TOKEN", "from-env")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert hf_token() == "from-file"
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "missing"))
    assert hf_token() == "from-env"


def test_prebuilt_source_keeps_the_contract(converted: Any, tiny_source: Path, tmp_path: Path) -> None:
    repo = tmp_path / "prebuilt-repo"
    shutil.copytree(converted("builder", "cpu-int4"), repo / "cpu-int4")
    (repo / "cpu-int4" / "conversion.json").unlink()
    out = tmp_path / "model"
    result = run_cli("--prebuilt", str(repo), "--model", str(tiny_source), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    data = manifest.read(out)
    assert data is not None and data["method"] == "prebuilt"
    assert data["prebuilt"]["subfolder"] == "cpu-int4"
    assert data["verification"]["comparison"]["positions"] > 0
    assert manifest.intact(out, data, check_hashes=True)


def test_supported_architectures_are_the_builders() -> None:
    from onnxruntime_genai.models import builder

    text = Path(builder.__file__).read_text()
    for architecture in source.SUPPORTED_ARCHITECTURES:
        assert f'"{architecture}"' in text, architecture


def test_toolchain_constants_match_what_is_installed() -> None:
    for package, version in TOOLCHAIN.items():
        assert metadata.version(package) == version


def test_telemetry_is_off_after_disable(monkeypatch: pytest.MonkeyPatch) -> None:
    from convert import telemetry

    monkeypatch.delenv("OLIVE_DISABLE_TELEMETRY", raising=False)
    telemetry.disable()
    assert os.environ["OLIVE_DISABLE_TELEMETRY"] == "1"


def test_cpu_count_follows_the_cgroup_quota(tmp_path: Path) -> None:
    from convert.cpus import available_cpus

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert available_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))

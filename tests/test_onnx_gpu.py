"""The ONNX backend on `device: gpu`, end to end up to the server: the conversion step each target
renders (the Kubernetes Job of `prod`, the Compose service of the `dev` VM) run with the real
converter on this machine, which has no GPU, like the conversion pod (it requests none) and the
converter image (the CPU runtime, convert/requirements.txt).

Why no GPU: onnxruntime-genai 0.14.1's model builder (`-e cuda`) builds the CUDA graph on the CPU
(torch loads the weights, onnxruntime's MatMulNBits quantizer packs int4; `-e cuda` sets fp16
inputs and the `cuda` provider in genai_config.json), measured here for cuda-int4 and cuda-fp16 with
the builder and with Olive 0.13.0's ModelBuilder pass; the CPU provider runs that graph, so the
converter verifies it there. A GPU for the Job would also wait for the GPU the server's pod holds
while it waits for the model.

Stand-ins: the hub model (`--model microsoft/Phi-4-mini-instruct --revision main`) is the tiny random
Phi3 of tests/conftest.py, a local folder (which takes no revision), with HF_HUB_OFFLINE=1; the
volume at /models is a temporary folder; Docker is not run: the argv is the container's (command and
args on Kubernetes; entrypoint and command on Compose, `$$` read as `$`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.azure.vm import decode_custom_data
from offline.recording import PROJECT_ROOT, Recording
from tests.conftest import run_stack, stack_value

pytestmark = pytest.mark.slow

JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
VM = "azure-native:compute:VirtualMachine"
GPU = "nvidia.com/gpu"
CONTAINER_MODELS = "/models"
CPU_LOCK = PROJECT_ROOT / "convert" / "requirements.txt"


def gpu_onnx(stack: str) -> dict[str, Any]:
    backends = stack_value(stack, "backends")
    backends["onnx"] = {**backends["onnx"], "device": "gpu"}
    if stack == "dev":
        # The VM's one T4 holds vLLM's share and ONNX on CUDA, not Ollama's model beside them too.
        backends["ollama"] = {**backends["ollama"], "enabled": False}
        # dev fetches Microsoft's CPU build; this variant converts for CUDA itself, within what the
        # VM's memory leaves beside the servers (the test runs the tiny model, not the 3.8B one).
        backends["onnx"]["conversion"] = {"memory": "8Gi"}
    return {"backends": backends}


def local_source(argv: list[str], model: Path) -> list[str]:
    """The hub model replaced by a local folder (which takes no --revision)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--revision":
            skip = True
            continue
        out.append(str(model) if i > 0 and argv[i - 1] == "--model" else arg)
    return out


def run_converter(argv: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # `python` is the converter's
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
        "OLIVE_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False, timeout=900)


def assert_cuda_model(folder: Path, target: str) -> None:
    config = json.loads((folder / "genai_config.json").read_text())
    providers = config["model"]["decoder"]["session_options"]["provider_options"]
    assert [name for options in providers for name in options] == ["cuda"]
    manifest = json.loads((folder / "conversion.json").read_text())
    assert manifest["target"] == target and manifest["execution_provider"] == "cuda"
    assert manifest["verification"]["device"] == "cpu" and manifest["verification"]["generation"]["tokens"] > 0


def assert_runtime_is_the_cpu_images() -> None:
    """This machine converts as the CPU converter image does: its onnxruntime-genai pin, no CUDA."""
    pinned = re.search(r"^onnxruntime-genai==(\S+)", CPU_LOCK.read_text(), re.MULTILINE)
    assert pinned is not None and metadata.version("onnxruntime-genai") == pinned.group(1)
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()


def test_kubernetes_conversion_job_for_a_gpu_backend(tiny_source: Path, tmp_path: Path) -> None:
    assert_runtime_is_the_cpu_images()
    rec: Recording = run_stack("prod", gpu_onnx("prod"))
    job = rec.one(JOB, "-onnx-prepare").plain
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The CPU converter image, no GPU asked for; it may still run on a GPU node (the pools' taints).
    assert re.search(r"/slm-serving/converter:[0-9a-f]{16}@sha256:", container["image"])
    assert GPU not in container["resources"]["requests"] and GPU not in container["resources"]["limits"]
    assert {t["key"] for t in pod["tolerations"]} >= {"sku"}
    server = rec.one(DEPLOYMENT, "-onnx-deployment").plain["spec"]["template"]["spec"]
    assert "onnx-server:" in server["containers"][0]["image"] and "-cuda@" in server["containers"][0]["image"]
    assert server["containers"][0]["resources"]["limits"][GPU] == "1"

    argv = [*container["command"], *container["args"]]
    target = argv[argv.index("--target") + 1]
    assert target == "cuda-int4"
    out = argv[argv.index("--out") + 1]
    argv[argv.index("--out") + 1] = str(tmp_path / Path(out).name)
    result = run_converter(local_source(argv, tiny_source), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_cuda_model(tmp_path / Path(out).name, target)


def test_vm_conversion_service_for_a_gpu_backend(tiny_source: Path, tmp_path: Path) -> None:
    assert_runtime_is_the_cpu_images()
    vm = run_stack("dev", gpu_onnx("dev")).one(VM).plain
    document = yaml.safe_load(decode_custom_data(vm["osProfile"]["customData"]))
    files = {f["path"]: f["content"] for f in document["write_files"]}
    services = yaml.safe_load(files["/opt/slm-serving/compose.yaml"])["services"]
    convert, server = services["convert"], services["onnx"]
    assert "/slm-serving/converter:" in convert["image"] and "-cuda" not in convert["image"]
    assert "reservations" not in convert["deploy"]["resources"]
    assert "-cuda" in server["image"]
    assert server["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

    data = tmp_path / "models"
    data.mkdir()
    argv = [
        a.replace("$$", "$").replace(CONTAINER_MODELS, str(data)) for a in convert["entrypoint"] + convert["command"]
    ]
    target = argv[argv.index("--target") + 1]
    out = Path(argv[argv.index("--out") + 1])
    result = run_converter(local_source(argv, tiny_source), tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert target == "cuda-int4" and out.parent == data
    assert_cuda_model(out, target)

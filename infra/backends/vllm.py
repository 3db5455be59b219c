"""vLLM: the upstream OpenAI server. Its Hugging Face cache is a persistent volume (replicas and
restarts never re-download); the HF token and the API keys are files, and a shell step hands every
key to `--api-key` so no key is ever in a pod spec, a Compose file or a process environment."""

from __future__ import annotations

import shlex
from pathlib import Path

from infra import images
from infra.backends.description import Backend, Image, Metrics, Paths, Probes, Route, SecretFile, Volume, http_check
from infra.config import VllmBackendConfig
from infra.conventions import API_KEYS_FILE, BACKEND_PORT, HF_TOKEN_FILE, backend_job
from infra.placement import GpuMemory

NAME = "vllm"
CACHE_MOUNT = "/cache"
CACHE_SIZE_GB = 64
SHM_SIZE = "2Gi"
# vLLM 0.12 needs CUDA compute capability 7.0 (Volta) or newer.
MIN_COMPUTE_CAPABILITY = 7.0
# Our chat template and tool parser (vllm_files/), read at render time and mounted read-only: vLLM's
# own phi4_mini_json parser looks for `functools[...]`, and without a template that writes the tools
# into Phi-4-mini's system turn the model never sees them.
FILES_DIR = Path(__file__).parent / "vllm_files"
FILES_MOUNT = "/opt/slm/tool-calling"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOOL_PARSER_FILE = "phi4_tool_parser.py"
TOOL_PARSER = "phi4_mini_markers"  # the name the adapter registers
# One scanner for both servers: the ONNX server's own module, then vLLM's adapter, as one file.
TOOL_MARKERS = images.PROJECT_ROOT / "images" / "onnx-server" / "onnx_server" / "tool_markers.py"
TOOL_PARSER_ADAPTER = FILES_DIR / "tool_parser_adapter.py"


def tool_parser_source() -> str:
    return TOOL_MARKERS.read_text() + "\n\n" + TOOL_PARSER_ADAPTER.read_text()


def files() -> dict[str, str]:
    return {CHAT_TEMPLATE_FILE: (FILES_DIR / CHAT_TEMPLATE_FILE).read_text(), TOOL_PARSER_FILE: tool_parser_source()}


def served_models(config: VllmBackendConfig) -> tuple[str, ...]:
    return (config.served_model_name or config.model,)


def vllm_arguments(config: VllmBackendConfig) -> list[str]:
    """`vllm serve` flags from config (the API keys are appended at start from the mounted file)."""
    args = [
        config.model,
        "--revision",
        config.revision,
        "--served-model-name",
        served_models(config)[0],
        "--host",
        "0.0.0.0",  # noqa: S104 (a pod or the Compose network; only the gateway reaches it)
        "--port",
        str(BACKEND_PORT),
        "--download-dir",
        f"{CACHE_MOUNT}/hub",
        "--max-model-len",
        str(config.max_model_len),
        "--gpu-memory-utilization",
        f"{config.gpu_memory_utilization:g}",
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--dtype",
        config.dtype,
    ]
    if config.quantization is not None:
        args += ["--quantization", config.quantization]
    args += ["--chat-template", f"{FILES_MOUNT}/{CHAT_TEMPLATE_FILE}"]
    if config.tool_call_parser is not None:
        args += [
            "--enable-auto-tool-choice",
            "--tool-parser-plugin",
            f"{FILES_MOUNT}/{TOOL_PARSER_FILE}",
            "--tool-call-parser",
            config.tool_call_parser,
        ]
    return args


def start_command(config: VllmBackendConfig, paths: Paths) -> tuple[str, ...]:
    """A shell step reads the keys file; vLLM accepts several keys after one --api-key."""
    keys = f"{paths.secrets}/{API_KEYS_FILE}"
    script = (
        "set -eu\n"
        f"set -- $(grep -v '^#' {keys})\n"
        f'[ "$#" -gt 0 ] || {{ echo "no API keys in {keys}" >&2; exit 1; }}\n'
        f'exec vllm serve {shlex.join(vllm_arguments(config))} --api-key "$@"\n'
    )
    return ("/bin/sh", "-c", script)


def describe(config: VllmBackendConfig, paths: Paths, prefix: str) -> Backend:
    return Backend(
        name=NAME,
        config=config,
        image=Image(upstream=images.VLLM if config.device == "gpu" else images.VLLM_CPU),
        command=start_command(config, paths),
        args=(),
        # The image defaults to root; as our uid, HOME is scratch (vLLM, Triton and torch.compile
        # write their caches under it) and the HF cache is the volume.
        env={
            "HOME": "/tmp",
            "HF_HOME": CACHE_MOUNT,
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **({"HF_TOKEN_PATH": f"{paths.secrets}/{HF_TOKEN_FILE}"} if paths.hf_token else {}),
        },
        probes=Probes(startup="/health", readiness="/health", liveness="/health"),
        health_command=http_check("/health"),
        route=Route(NAME, prefix, served_models(config)),
        volumes=(Volume(claim="vllm-cache", name="cache", mount=CACHE_MOUNT, size_gb=CACHE_SIZE_GB),),
        secrets=(SecretFile(API_KEYS_FILE), *((SecretFile(HF_TOKEN_FILE),) if paths.hf_token else ())),
        shm_size=SHM_SIZE,
        metrics=Metrics(job=backend_job(NAME), queue_metric="vllm:num_requests_waiting"),
        downloads_models=True,
        files=files(),
        files_mount=FILES_MOUNT,
        # vLLM preallocates this share of the GPU's whole memory at start (weights, activations, and
        # the rest as KV cache), whatever the model needs: --gpu-memory-utilization.
        gpu_memory=GpuMemory(
            share=config.gpu_memory_utilization,
            basis=f"gpuMemoryUtilization {config.gpu_memory_utilization:g}",
            key="gpuMemoryUtilization",
        )
        if config.device == "gpu"
        else None,
    )

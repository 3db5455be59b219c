"""The ONNX backend: our server (images/onnx-server) serving the model the stack converts itself.
A preparation step (`python -m convert`, named after the conversion key) writes /models/<key>/ and
its manifest last; the server mounts the same volume read-only and starts once the manifest exists."""

from __future__ import annotations

from infra.backends.conversion_plan import conversion_spec, converter_arguments
from infra.backends.description import (
    Backend,
    Image,
    Metrics,
    Paths,
    Preparation,
    Probes,
    Resources,
    Route,
    SecretFile,
    Volume,
    http_check,
)
from infra.config import OnnxBackendConfig
from infra.conventions import API_KEYS_FILE, BACKEND_PORT, HF_TOKEN_FILE, WORKLOAD_UID, backend_job
from infra.placement import GpuMemory

NAME = "onnx"
MODELS_MOUNT = "/models"
# The manifest the converter writes last, inside the folder it renames into place.
MANIFEST = "conversion.json"
# GPU memory of the reference model on CUDA: int4 weights ~2.9 GiB (Phi-4-mini's 3.8B parameters at
# 4 bits with block-32 scales, embeddings and head in fp16), onnxruntime-genai's KV buffers for a
# batch, and the CUDA context; cuda-fp16 doubles the weights. An estimate, not a measurement.
GPU_MEMORY_GIB = {"cuda-int4": 6.0, "cuda-fp16": 10.0}
# The converter image's ENTRYPOINT (images/converter/Dockerfile).
CONVERTER_COMMAND = ("python", "-m", "convert")


def variant(config: OnnxBackendConfig) -> str:
    """The image variant: the CUDA build of the server (and converter) on a GPU backend."""
    return "cuda" if config.device == "gpu" else "cpu"


def conversion_key(config: OnnxBackendConfig) -> str:
    return conversion_spec(config.conversion, config.conversion_target).key()


def model_path(config: OnnxBackendConfig) -> str:
    return f"{MODELS_MOUNT}/{conversion_key(config)}"


def server_arguments(config: OnnxBackendConfig, paths: Paths) -> tuple[str, ...]:
    return (
        "--model",
        model_path(config),
        "--host",
        "0.0.0.0",  # noqa: S104 (a pod or the Compose network; only the gateway reaches it)
        "--port",
        str(BACKEND_PORT),
        "--served-model-name",
        config.served_model_name,
        "--api-key-file",
        f"{paths.secrets}/{API_KEYS_FILE}",
        "--max-batch",
        str(config.max_batch),
        "--max-waiting",
        str(config.max_waiting),
    )


def conversion(config: OnnxBackendConfig, paths: Paths) -> Preparation:
    c = config.conversion
    env = {"HF_HOME": "/tmp/huggingface", "OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    if paths.hf_token:
        env["HF_TOKEN_PATH"] = f"{paths.secrets}/{HF_TOKEN_FILE}"
    key = conversion_key(config)
    return Preparation(
        name="convert",
        key=key,
        component="model-conversion",
        image=Image(own=("converter", "cpu")),
        # The image's entrypoint, named so a runtime can wrap it (the VM runs it only while the
        # manifest is missing).
        command=CONVERTER_COMMAND,
        args=tuple(converter_arguments(c, config.conversion_target, model_path(config))),
        env=env,
        secrets=(SecretFile(HF_TOKEN_FILE),) if paths.hf_token else (),
        ready_file=f"{model_path(config)}/{MANIFEST}",
        resources=Resources(cpu=c.cpu, memory=c.memory),
        resources_key="conversion",
        deadline_seconds=c.deadline_minutes * 60,
        retries=2,
        uid=WORKLOAD_UID,
        tolerates_gpu_nodes=True,
        pod_labels={"slm-serving/conversion-key": key},
    )


def describe(config: OnnxBackendConfig, paths: Paths, prefix: str) -> Backend:
    return Backend(
        name=NAME,
        config=config,
        image=Image(own=("onnx-server", variant(config))),
        args=server_arguments(config, paths),
        probes=Probes(startup="/health", readiness="/ready", liveness="/health"),
        health_command=http_check("/health"),
        route=Route(NAME, prefix, (config.served_model_name,)),
        volumes=(Volume(claim="models", name="models", mount=MODELS_MOUNT, read_only=True),),
        secrets=(SecretFile(API_KEYS_FILE),),
        # The server reports the same vllm:* names as vLLM (README: metric mapping).
        metrics=Metrics(job=backend_job(NAME), queue_metric="vllm:num_requests_waiting"),
        preparation=conversion(config, paths),
        own_images=(("converter", "cpu"), ("onnx-server", variant(config))),
        gpu_memory=_gpu_memory(config),
    )


def _gpu_memory(config: OnnxBackendConfig) -> GpuMemory | None:
    target = config.conversion_target
    if config.device != "gpu" or target not in GPU_MEMORY_GIB:
        return None
    return GpuMemory(gib=GPU_MEMORY_GIB[target], basis=f"{target} Phi-4-mini estimate", key="conversion.target")

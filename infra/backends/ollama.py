"""Ollama: the model pulled once into a persistent volume by a preparation step (named after the
model and its variants, so an unchanged stack never reruns it) that also creates the Modelfile
variants; the server keeps models loaded (`OLLAMA_KEEP_ALIVE`). Ollama has no auth and no /metrics
of its own: the gateway checks keys and measures its traffic, and its waiting requests are those in
flight beyond `num_parallel` per ready replica (counted for one loaded model: requests spread over
several loaded variants are over-counted, which scales out early rather than late)."""

from __future__ import annotations

import hashlib
import json
import shlex

from infra import images
from infra.backends.description import Backend, Image, Paths, Preparation, Probes, Resources, Route, Volume
from infra.backends.modelfiles import modelfile, server_environment
from infra.config import OllamaBackendConfig
from infra.conventions import BACKEND_PORT, WORKLOAD_UID
from infra.placement import GpuMemory

NAME = "ollama"
MODELS_MOUNT = "/models"
MODELFILES_MOUNT = "/modelfiles"
MODELS_SIZE_GB = 32
PULL_DEADLINE_SECONDS = 2 * 3600
# GPU memory of a loaded model, for the library tags whose size is known: weights GiB, KV cache MiB
# per token, longest context. phi4-mini:3.8b is Q4_K_M, 2.5 GB (ollama.com/library/phi4-mini);
# Phi-4-mini has 32 layers x 8 KV heads x 128 dims, K and V in f16: 2 x 32 x 8 x 128 x 2 bytes =
# 128 KiB a token, and a 128K context.
MODEL_GPU_FOOTPRINT = {"phi4-mini:3.8b": (2.5, 0.125, 131072)}
# Ollama's default context by GPU memory when OLLAMA_CONTEXT_LENGTH is unset (docs/context-length.mdx:
# below 24 GiB 4k, 24-48 GiB 32k, 48 GiB and more 256k), capped at the model's; every parallel slot
# holds a context of its own.
DEFAULT_CONTEXT_BY_GPU = ((24.0, 4096), (48.0, 32768), (float("inf"), 262144))
# The CUDA context and the compute graph beside weights and cache.
RUNTIME_GIB = 1.0
# What clients may call: the OpenAI API and the native API's inference and listing. The admin
# endpoints (/api/pull, create, copy, delete, push, blobs) change the model store: only the
# preparation step uses them, on its private server.
CLIENT_PATHS = (
    "/v1",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/show",
    "/api/ps",
    "/api/version",
)
# The preparation step's private server (never reachable from outside its container).
PRIVATE_HOST = "127.0.0.1:11434"


def served_models(config: OllamaBackendConfig) -> tuple[str, ...]:
    return (config.model, *(v.name for v in config.variants))


def models_key(config: OllamaBackendConfig) -> str:
    """Changes when the model or any variant does: a new key is a new pull and a new ready marker."""
    spec = {"model": config.model, "variants": [v.model_dump(mode="json") for v in config.variants]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def ready_file(config: OllamaBackendConfig) -> str:
    return f"{MODELS_MOUNT}/.ready-{models_key(config)}"


def server_env(config: OllamaBackendConfig) -> dict[str, str]:
    # The image defaults to root; Ollama runs as any uid once HOME (its key pair) and OLLAMA_MODELS
    # point at writable volumes.
    return {"HOME": "/tmp", "OLLAMA_MODELS": MODELS_MOUNT, **server_environment(config)}


def pull_script(config: OllamaBackendConfig) -> str:
    """Start a private server, pull the model (a no-op when present), create each variant, then
    write the ready marker the server waits for."""
    creates = "".join(
        f"ollama create {shlex.quote(v.name)} -f {MODELFILES_MOUNT}/{shlex.quote(v.name)}\n" for v in config.variants
    )
    return (
        "set -eu\n"
        "ollama serve >/tmp/serve.log 2>&1 &\n"
        "server=$!\n"
        "trap 'kill $server' EXIT\n"
        "tries=0\n"
        "until ollama list >/dev/null 2>&1; do\n"
        '  tries=$((tries + 1)); [ "$tries" -lt 120 ] || { cat /tmp/serve.log; exit 1; }; sleep 1\n'
        "done\n"
        f"ollama pull {shlex.quote(config.model)}\n"
        f"{creates}"
        f"echo {models_key(config)} > {ready_file(config)}\n"
    )


def gpu_memory(config: OllamaBackendConfig) -> GpuMemory | None:
    """One loaded model (the variants share its weights) with a context per parallel slot."""
    if config.device != "gpu" or config.model not in MODEL_GPU_FOOTPRINT:
        return None
    weights, kv_mib_per_token, longest = MODEL_GPU_FOOTPRINT[config.model]
    tiers = tuple(
        (below, config.num_parallel * min(tokens, longest) * kv_mib_per_token / 1024)
        for below, tokens in DEFAULT_CONTEXT_BY_GPU
    )
    return GpuMemory(
        gib=weights + RUNTIME_GIB,
        cache_tiers=tiers,
        basis=f"{config.model} {weights:g}GiB + {RUNTIME_GIB:g}GiB runtime + KV cache of "
        f"{config.num_parallel} parallel contexts at Ollama's default length for the GPU",
        key="numParallel",
    )


def describe(config: OllamaBackendConfig, paths: Paths, prefix: str) -> Backend:
    del paths  # no secrets: Ollama checks no keys
    key = models_key(config)
    return Backend(
        name=NAME,
        config=config,
        image=Image(upstream=images.OLLAMA),
        args=("serve",),
        env={**server_env(config), "OLLAMA_HOST": f"0.0.0.0:{BACKEND_PORT}", "OLLAMA_NOPRUNE": "1"},
        # `GET /` answers "Ollama is running" without auth.
        probes=Probes(startup="/", readiness="/", liveness="/"),
        # The CLI talks to the server OLLAMA_HOST names: it lists only when the API answers.
        health_command=("ollama", "list"),
        # No /metrics: its queue is what the gateway has in flight beyond num_parallel per replica.
        parallel=config.num_parallel,
        # Its native API beside /v1.
        route=Route(NAME, prefix, served_models(config), paths=CLIENT_PATHS),
        # The server only reads the models the preparation pulled (no pruning at start, which writes).
        volumes=(
            Volume(claim="ollama-models", name="models", mount=MODELS_MOUNT, size_gb=MODELS_SIZE_GB, read_only=True),
        ),
        preparation=Preparation(
            name="ollama-pull",
            key=key,
            component="model-pull",
            image=Image(upstream=images.OLLAMA),
            command=("/bin/sh", "-c", pull_script(config)),
            args=(),
            env={**server_env(config), "OLLAMA_HOST": PRIVATE_HOST},
            files={v.name: modelfile(config.model, v) for v in config.variants},
            files_mount=MODELFILES_MOUNT,
            ready_file=ready_file(config),
            resources=Resources(cpu="500m", memory="1Gi", cpu_limit="2", memory_limit="2Gi"),
            deadline_seconds=PULL_DEADLINE_SECONDS,
            retries=3,
            uid=WORKLOAD_UID,
        ),
        gpu_memory=gpu_memory(config),
    )

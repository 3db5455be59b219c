"""Every image the stack runs: the upstream ones pinned by release, and our own with the tags they
are referenced by.

A tag is a hash of the image's build context, so a change to the code is a new tag (never `latest`)
and an unchanged tree keeps its tag across deploys.
"""

import hashlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Upstream images, pinned by release (the same pins on Kubernetes and on the VM).
VLLM = "vllm/vllm-openai:v0.12.0"
VLLM_CPU = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.12.0"
OLLAMA = "ollama/ollama:0.13.5"
OPEN_WEBUI = "ghcr.io/open-webui/open-webui:v0.6.36"
CADDY = "caddy:2.10.2-alpine"
BUSYBOX = "busybox:1.37.0"
PROMETHEUS = "prom/prometheus:v2.53.2"
ALERTMANAGER = "prom/alertmanager:v0.28.1"
GRAFANA = "grafana/grafana:11.2.2"
NODE_EXPORTER = "prom/node-exporter:v1.8.2"
DCGM_EXPORTER = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.8-3.6.0-ubuntu22.04"

# Image name -> the paths (relative to the project root) its Dockerfile copies.
IMAGE_CONTEXTS: dict[str, tuple[str, ...]] = {
    "converter": ("images/converter", "convert"),
    "onnx-server": ("images/onnx-server",),
}
_IGNORED = {"__pycache__", ".pytest_cache"}


def context_tag(paths: tuple[str, ...], root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for relative in paths:
        base = root / relative
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not _IGNORED & set(p.parts)):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def image_ref(registry: str, name: str, variant: str = "cpu") -> str:
    """`<registry>/slm-serving/<name>:<context hash>`; the CUDA build (`--build-arg VARIANT=cuda`) adds `-cuda`."""
    suffix = "" if variant == "cpu" else f"-{variant}"
    return f"{registry}/slm-serving/{name}:{context_tag(IMAGE_CONTEXTS[name])}{suffix}"

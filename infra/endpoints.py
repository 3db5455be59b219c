"""Where each enabled backend is reached and by which model name: the same answer for the gateway on
Kubernetes and the TLS proxy on the VM, so the `endpoints` export reads the same on every target."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from infra.config import StackSettings

# Every backend container listens here (vLLM's default; Ollama and the ONNX server are told to).
BACKEND_PORT = 8000
# Ollama's native API beside /v1; the route forwards both.
OLLAMA_API_PATH = "/api"


@dataclass(frozen=True)
class Route:
    backend: str
    prefix: str  # path routing: /<prefix>/...; host routing: <prefix>.<domain>
    models: tuple[str, ...]  # the names clients pass as `model`; the first is the base model


def route_prefix(settings: StackSettings, backend: str) -> str:
    configured = settings.backends.enabled()[backend].route_prefix
    return configured or backend


def served_models(settings: StackSettings, backend: str) -> tuple[str, ...]:
    b = settings.backends
    if backend == "vllm":
        return (b.vllm.served_model_name or b.vllm.model,)
    if backend == "ollama":
        return (b.ollama.model, *(v.name for v in b.ollama.variants))
    return (b.onnx.served_model_name,)


def routes(settings: StackSettings) -> list[Route]:
    return [
        Route(name, route_prefix(settings, name), served_models(settings, name)) for name in settings.backends.enabled()
    ]


def public_base_url(settings: StackSettings, route: Route, address: str) -> str:
    """The OpenAI base URL a client uses; `address` is the gateway's DNS name or IP."""
    if settings.gateway.routing == "host" and settings.gateway.domain:
        return f"https://{route.prefix}.{settings.gateway.domain}/v1"
    return f"https://{address}/{route.prefix}/v1"


def web_ui_url(settings: StackSettings, address: str) -> str:
    """Open WebUI serves from the root path: ui.<domain> (host routing) or the gateway's root."""
    if settings.gateway.routing == "host" and settings.gateway.domain:
        return f"https://ui.{settings.gateway.domain}/"
    return f"https://{address}/"


def azure_dns_label(settings: StackSettings, stack: str) -> str:
    """The gateway's (aks) or the VM's DNS label: stable for a stack, so its name is known before
    deployment and can go on the certificate; unique enough within the region's zone."""
    digest = hashlib.sha256(f"{settings.owner}/{stack}/{settings.location}".encode()).hexdigest()[:6]
    return f"slm-{stack}-{digest}"[:63]


def azure_host(settings: StackSettings, stack: str) -> str:
    """`<label>.<region>.cloudapp.azure.com`: Azure's DNS name for a public IP with that label."""
    return f"{azure_dns_label(settings, stack)}.{settings.location}.cloudapp.azure.com"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

"""Where each enabled backend is reached and by which model name, and the one `endpoints`,
`apiKeys` and `apiKey` exports every target makes (the gateway on Kubernetes, the VM's proxy)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra.backends import registry
from infra.backends.description import Route
from infra.config import StackSettings


def routes(settings: StackSettings) -> list[Route]:
    return registry.routes(settings.backends)


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


@dataclass(frozen=True)
class Endpoints:
    """What a target hands the exports: the address clients use and the keys they present."""

    address: pulumi.Input[str]
    # client name -> API key (a secret Output)
    api_keys: pulumi.Output[dict[str, str]]
    # More facts about the gateway (`ip` on the VM, `inClusterUrl` on Kubernetes).
    gateway: pulumi.Input[Mapping[str, Any]] = field(default_factory=dict)
    # backend -> its in-cluster OpenAI base URL (Kubernetes targets).
    in_cluster: Mapping[str, str] = field(default_factory=dict)
    web_ui: bool = False


def export_endpoints(settings: StackSettings, endpoints: Endpoints) -> None:
    """`endpoints` (per backend: base URL and models), `apiKeys` and `apiKey` (the first client's)."""

    def document(parts: list[Any]) -> dict[str, Any]:
        address, gateway = parts
        backends: dict[str, Any] = {}
        for r in routes(settings):
            backends[r.backend] = {
                "baseUrl": public_base_url(settings, r, address),
                "model": r.models[0],
                "models": list(r.models),
            }
            if r.backend in endpoints.in_cluster:
                backends[r.backend]["inClusterUrl"] = endpoints.in_cluster[r.backend]
        result: dict[str, Any] = {"gateway": {"address": address, **gateway}, "backends": backends}
        if endpoints.web_ui:
            result["webUi"] = web_ui_url(settings, address)
        return result

    pulumi.export("endpoints", pulumi.Output.all(endpoints.address, endpoints.gateway).apply(document))
    first = settings.gateway.api_key_clients[0]
    pulumi.export("apiKeys", endpoints.api_keys)
    pulumi.export("apiKey", endpoints.api_keys.apply(lambda keys: keys[first]))

"""The gateway in front of every backend, and the web UI it serves."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from infra.config.base import _Model
from infra.config.types import ClientNames, HttpUrl


class GatewayConfig(_Model):
    """The one TLS entry point in front of every backend."""

    # A DNS name you control: TLS from ACME (Let's Encrypt). Unset: a self-signed certificate.
    domain: str | None = None
    acme_email: str | None = None
    acme_server: HttpUrl = "https://acme-v02.api.letsencrypt.org/directory"
    # path: https://<domain>/<backend>/v1; host: https://<backend>.<domain>/v1 (needs domain).
    routing: Literal["path", "host"] = "path"
    # No public address: an internal load balancer (aks) or a ClusterIP service.
    internal_only: bool = False
    # One API key is generated per client name; every route accepts any of them.
    api_key_clients: ClientNames = ("default",)
    # cluster target: the host clients reach the gateway at (your load balancer's name or IP, or
    # `localhost:8443` with a port-forward). Unset: the gateway's in-cluster name.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9.-]+(:\d{1,5})?$", value):
            raise ValueError(f"{value!r} is not a host[:port] like 'llm.example.com' or 'localhost:8443'")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}$", value):
            raise ValueError(f"{value!r} is not a DNS name like 'llm.example.com'")
        return value


class WebUiConfig(_Model):
    """Open WebUI in front of the backends, with its own sign-in (exposed at <gateway>/ui)."""

    enabled: bool = False

"""The API keys clients present (`Authorization: Bearer <key>`): one generated key per client name,
kept in two Secrets: one the gateway checks (key = client, value = API key) and one the backends
that check keys themselves read as a file (every key, one per line)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import api_keys
from infra.conventions import API_KEYS_FILE

# The file name vLLM and the ONNX server read their keys from.
BACKEND_KEYS_FILE = API_KEYS_FILE


@dataclass(frozen=True)
class ApiKeysArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    clients: Sequence[str]
    labels: dict[str, str]


class ApiKeys(pulumi.ComponentResource):
    # client name -> key, secret
    keys: pulumi.Output[dict[str, str]]
    gateway_secret: pulumi.Output[str]
    backend_secret: pulumi.Output[str]

    def __init__(self, name: str, args: ApiKeysArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:ApiKeys", name, None, opts)
        generated = {client: api_keys.issue(f"{name}-{client}", self) for client in args.clients}
        self.keys = pulumi.Output.secret(pulumi.Output.all(**generated))
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        labels = {**args.labels, "app.kubernetes.io/component": "api-keys"}
        gateway = k8s.core.v1.Secret(
            f"{name}-gateway",
            metadata={"name": "gateway-api-keys", "namespace": args.namespace, "labels": labels},
            type="Opaque",
            string_data=self.keys,
            opts=child,
        )
        backend = k8s.core.v1.Secret(
            f"{name}-backends",
            metadata={"name": "backend-api-keys", "namespace": args.namespace, "labels": labels},
            type="Opaque",
            string_data={BACKEND_KEYS_FILE: self.keys.apply(lambda keys: "".join(f"{k}\n" for k in keys.values()))},
            opts=child,
        )
        self.gateway_secret = gateway.metadata.apply(lambda m: m.name or "gateway-api-keys")
        self.backend_secret = backend.metadata.apply(lambda m: m.name or "backend-api-keys")
        self.register_outputs({"keys": self.keys})

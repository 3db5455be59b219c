"""The Hugging Face token as one Secret, projected as a file into every backend and preparation
step that downloads from the hub (HF_TOKEN_PATH); never an environment value."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.conventions import HF_TOKEN_FILE

SECRET_NAME = "hf-token"  # noqa: S105 (a Secret's name)


@dataclass(frozen=True)
class HubTokenArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    token: pulumi.Output[str]
    labels: dict[str, str]


class HubToken(pulumi.ComponentResource):
    # The Secret's name; its key is HF_TOKEN_FILE.
    secret_name: pulumi.Output[str]

    def __init__(self, name: str, args: HubTokenArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:HubToken", name, None, opts)
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata={"name": SECRET_NAME, "namespace": args.namespace, "labels": args.labels},
            type="Opaque",
            string_data={HF_TOKEN_FILE: args.token},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self.secret_name = secret.metadata.apply(lambda m: m.name or SECRET_NAME)
        self.register_outputs({"secret_name": self.secret_name})

"""The ONNX backend on Kubernetes: our server, the converted model mounted read-only from the
conversion's volume, started only once the conversion has written its manifest."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import OnnxBackendConfig
from infra.endpoints import BACKEND_PORT
from infra.k8s.backends.serving import BackendPlatform, Probes, ServingObjects, Workload, demand_query
from infra.k8s.conversion import ModelConversion
from infra.k8s.namespaces import WORKLOAD_NAMESPACE

SECRETS_MOUNT = "/var/run/secrets/slm"
API_KEYS_FILE = "api-keys"


@dataclass(frozen=True)
class OnnxBackendArgs:
    platform: BackendPlatform
    config: OnnxBackendConfig
    image: pulumi.Input[str]
    conversion: ModelConversion
    # Secret with the key `api-keys`: every client key, one per line.
    api_keys_secret: pulumi.Input[str]


def server_arguments(config: OnnxBackendConfig, model_path: str) -> list[str]:
    return [
        "--model",
        model_path,
        "--host",
        "0.0.0.0",  # noqa: S104 (inside the pod; the NetworkPolicy admits only the gateway and Prometheus)
        "--port",
        str(BACKEND_PORT),
        "--served-model-name",
        config.served_model_name,
        "--api-key-file",
        f"{SECRETS_MOUNT}/{API_KEYS_FILE}",
        "--max-batch",
        str(config.max_batch),
        "--max-waiting",
        str(config.max_waiting),
    ]


class OnnxBackend(pulumi.ComponentResource):
    serving: ServingObjects

    def __init__(self, name: str, args: OnnxBackendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:OnnxBackend", name, None, opts)
        config, conversion = args.config, args.conversion
        volumes: list[k8s.core.v1.VolumeArgsDict] = [
            conversion.backend_volume(),
            {
                "name": "secrets",
                "secret": {
                    "secret_name": args.api_keys_secret,
                    "items": [{"key": API_KEYS_FILE, "path": API_KEYS_FILE}],
                    "default_mode": 0o400,
                },
            },
            {"name": "tmp", "empty_dir": {}},
        ]
        container: k8s.core.v1.ContainerArgsDict = {
            "name": "onnx",
            "image": args.image,
            "image_pull_policy": "IfNotPresent",
            "args": server_arguments(config, conversion.model_path),
            "volume_mounts": [
                conversion.backend_mount(),
                {"name": "secrets", "mount_path": SECRETS_MOUNT, "read_only": True},
                {"name": "tmp", "mount_path": "/tmp"},
            ],
        }
        self.serving = ServingObjects(
            name,
            Workload(
                backend="onnx",
                config=config,
                container=container,
                volumes=volumes,
                probes=Probes(startup="/health", readiness="/ready", liveness="/health"),
                init_containers=(conversion.wait_for_model(),),
                metrics=True,
                queue_query=demand_query(
                    WORKLOAD_NAMESPACE,
                    "onnx",
                    f'sum(vllm:num_requests_waiting{{namespace="{WORKLOAD_NAMESPACE}", service="onnx"}})',
                ),
            ),
            args.platform,
            self,
        )
        self.register_outputs({})

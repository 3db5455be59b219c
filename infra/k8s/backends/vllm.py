"""vLLM on Kubernetes: the upstream OpenAI server, its Hugging Face cache on a shared volume (replicas
and restarts never re-download), the HF token and the API keys as mounted files."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import images
from infra.config import VllmBackendConfig
from infra.endpoints import BACKEND_PORT
from infra.k8s.backends.serving import (
    BackendPlatform,
    Probes,
    ServingObjects,
    Workload,
    demand_query,
    labels_for,
)
from infra.k8s.namespaces import WORKLOAD_NAMESPACE
from infra.k8s.volumes import model_claim

# The upstream image defaults to root; we run it as our uid with HOME on a scratch volume (vLLM,
# Triton and torch.compile write their caches under HOME).
CACHE_MOUNT = "/cache"
SECRETS_MOUNT = "/var/run/secrets/slm"
HF_TOKEN_FILE = "hf-token"  # noqa: S105 (a file name)
API_KEYS_FILE = "api-keys"
SHM_SIZE = "2Gi"
CACHE_SIZE_GB = 64


@dataclass(frozen=True)
class VllmBackendArgs:
    platform: BackendPlatform
    config: VllmBackendConfig
    # Secret with the key `api-keys`: every client key, one per line.
    api_keys_secret: pulumi.Input[str]
    hf_token: pulumi.Output[str] | None


def vllm_arguments(config: VllmBackendConfig) -> list[str]:
    """`vllm serve` flags from config (the API keys are appended at start from the mounted file)."""
    args = [
        config.model,
        "--revision",
        config.revision,
        "--served-model-name",
        config.served_model_name or config.model,
        "--host",
        "0.0.0.0",  # noqa: S104 (inside the pod; the NetworkPolicy admits only the gateway and Prometheus)
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
    if config.tool_call_parser is not None:
        args += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    return args


def start_command(config: VllmBackendConfig) -> list[str]:
    """A shell step reads the keys file so no key is ever in the pod spec; vLLM accepts several keys."""
    keys = f"{SECRETS_MOUNT}/{API_KEYS_FILE}"
    script = (
        "set -eu\n"
        f"set -- $(grep -v '^#' {keys})\n"
        f'[ "$#" -gt 0 ] || {{ echo "no API keys in {keys}" >&2; exit 1; }}\n'
        f'exec vllm serve {shlex.join(vllm_arguments(config))} --api-key "$@"\n'
    )
    return ["/bin/sh", "-c", script]


class VllmBackend(pulumi.ComponentResource):
    serving: ServingObjects

    def __init__(self, name: str, args: VllmBackendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:VllmBackend", name, None, opts)
        platform, config = args.platform, args.config
        child = pulumi.ResourceOptions(parent=self, provider=platform.provider)
        labels = labels_for(platform, "vllm")
        cache = model_claim(
            f"{name}-cache",
            claim="vllm-cache",
            size_gb=CACHE_SIZE_GB,
            namespace=platform.namespace,
            storage_class=platform.storage_class,
            access_mode=platform.access_mode,
            labels=labels,
            opts=child,
        )

        projected: list[k8s.core.v1.VolumeProjectionArgsDict] = [
            {"secret": {"name": args.api_keys_secret, "items": [{"key": API_KEYS_FILE, "path": API_KEYS_FILE}]}}
        ]
        env: list[k8s.core.v1.EnvVarArgsDict] = [
            {"name": "HOME", "value": "/tmp"},
            {"name": "HF_HOME", "value": CACHE_MOUNT},
            {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "DO_NOT_TRACK", "value": "1"},
        ]
        if args.hf_token is not None:
            token = k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata={"name": "vllm-hf-token", "namespace": platform.namespace, "labels": labels},
                type="Opaque",
                string_data={HF_TOKEN_FILE: args.hf_token},
                opts=child,
            )
            projected.append(
                {
                    "secret": {
                        "name": token.metadata.apply(lambda m: m.name or "vllm-hf-token"),
                        "items": [{"key": HF_TOKEN_FILE, "path": HF_TOKEN_FILE}],
                    }
                }
            )
            env.append({"name": "HF_TOKEN_PATH", "value": f"{SECRETS_MOUNT}/{HF_TOKEN_FILE}"})

        volumes: list[k8s.core.v1.VolumeArgsDict] = [
            {
                "name": "cache",
                "persistent_volume_claim": {"claim_name": cache.metadata.apply(lambda m: m.name or "vllm-cache")},
            },
            {"name": "secrets", "projected": {"sources": projected, "default_mode": 0o400}},
            {"name": "tmp", "empty_dir": {}},
            # PyTorch's worker processes share tensors through /dev/shm; the runtime default is 64 MiB.
            {"name": "shm", "empty_dir": {"medium": "Memory", "size_limit": SHM_SIZE}},
        ]
        container: k8s.core.v1.ContainerArgsDict = {
            "name": "vllm",
            "image": images.VLLM if config.device == "gpu" else images.VLLM_CPU,
            "image_pull_policy": "IfNotPresent",
            "command": start_command(config),
            "env": env,
            "volume_mounts": [
                {"name": "cache", "mount_path": CACHE_MOUNT},
                {"name": "secrets", "mount_path": SECRETS_MOUNT, "read_only": True},
                {"name": "tmp", "mount_path": "/tmp"},
                {"name": "shm", "mount_path": "/dev/shm"},
            ],
        }
        self.serving = ServingObjects(
            name,
            Workload(
                backend="vllm",
                config=config,
                container=container,
                volumes=volumes,
                probes=Probes(startup="/health", readiness="/health", liveness="/health"),
                queue_query=demand_query(
                    WORKLOAD_NAMESPACE,
                    "vllm",
                    f'sum(vllm:num_requests_waiting{{namespace="{WORKLOAD_NAMESPACE}", service="vllm"}})',
                ),
                downloads_models=True,
                metrics=True,
            ),
            platform,
            self,
        )
        self.register_outputs({})

"""Ollama on Kubernetes: the model pulled once into a persistent volume by a Job (named after the
model and its variants, so an unchanged stack never reruns it), the Modelfile variants created by
the same Job, and the server kept loaded (`OLLAMA_KEEP_ALIVE`). Ollama has no auth of its own: the
gateway's API-key check and the NetworkPolicy are what protect it."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import images
from infra.config import OllamaBackendConfig
from infra.endpoints import BACKEND_PORT
from infra.k8s.backends.serving import (
    BackendPlatform,
    Probes,
    ServingObjects,
    Workload,
    demand_query,
    labels_for,
)
from infra.k8s.conversion import WAIT_IMAGE
from infra.k8s.namespaces import WORKLOAD_NAMESPACE
from infra.k8s.pods import DOWNLOADS_LABEL, WORKLOAD_UID, restricted_container, restricted_pod, scanner_annotations
from infra.k8s.volumes import model_claim
from infra.modelfiles import modelfile, server_environment

# The upstream image defaults to root; Ollama runs as any uid once HOME (its key pair) and
# OLLAMA_MODELS point at writable volumes.
MODELS_MOUNT = "/models"
MODELFILES_MOUNT = "/modelfiles"
MODELS_SIZE_GB = 32
PULL_DEADLINE_SECONDS = 2 * 3600


@dataclass(frozen=True)
class OllamaBackendArgs:
    platform: BackendPlatform
    config: OllamaBackendConfig


def models_key(config: OllamaBackendConfig) -> str:
    """Changes when the model or any variant does: a new key is a new pull Job and a new ready marker."""
    spec = {"model": config.model, "variants": [v.model_dump(mode="json") for v in config.variants]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def server_env(config: OllamaBackendConfig) -> list[k8s.core.v1.EnvVarArgsDict]:
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "OLLAMA_MODELS", "value": MODELS_MOUNT},
        *({"name": key, "value": value} for key, value in server_environment(config).items()),
    ]


def pull_script(config: OllamaBackendConfig, key: str) -> str:
    """Start a private server, pull the model (a no-op when present), create each variant, then
    write the ready marker the serving pods wait for."""
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
        f"touch {MODELS_MOUNT}/.ready-{key}\n"
    )


class OllamaBackend(pulumi.ComponentResource):
    serving: ServingObjects
    models_key: str

    def __init__(self, name: str, args: OllamaBackendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:OllamaBackend", name, None, opts)
        platform, config = args.platform, args.config
        child = pulumi.ResourceOptions(parent=self, provider=platform.provider)
        labels = labels_for(platform, "ollama")
        self.models_key = key = models_key(config)
        claim = model_claim(
            f"{name}-models",
            claim="ollama-models",
            size_gb=MODELS_SIZE_GB,
            namespace=platform.namespace,
            storage_class=platform.storage_class,
            access_mode=platform.access_mode,
            labels=labels,
            opts=child,
        )
        claim_name = claim.metadata.apply(lambda m: m.name or "ollama-models")
        modelfiles = k8s.core.v1.ConfigMap(
            f"{name}-modelfiles",
            metadata={"name": "ollama-modelfiles", "namespace": platform.namespace, "labels": labels},
            data={v.name: modelfile(config.model, v) for v in config.variants},
            opts=child,
        )
        models_volume: k8s.core.v1.VolumeArgsDict = {
            "name": "models",
            "persistent_volume_claim": {"claim_name": claim_name},
        }
        job_labels = {**labels_for(platform, "ollama", "model-pull"), DOWNLOADS_LABEL: "true"}
        k8s.batch.v1.Job(
            f"{name}-pull",
            metadata={
                "name": f"ollama-pull-{key}",
                "namespace": platform.namespace,
                "labels": job_labels,
                # Don't hold `pulumi up` for a download: the serving pods wait for the marker.
                "annotations": {"pulumi.com/skipAwait": "true", **scanner_annotations()},
            },
            spec={
                "backoff_limit": 3,
                "active_deadline_seconds": PULL_DEADLINE_SECONDS,
                "template": {
                    "metadata": {"labels": job_labels},
                    "spec": {
                        "restart_policy": "Never",
                        "automount_service_account_token": False,
                        "security_context": restricted_pod(WORKLOAD_UID),
                        "containers": [
                            {
                                "name": "pull",
                                "image": images.OLLAMA,
                                "image_pull_policy": "IfNotPresent",
                                "command": ["/bin/sh", "-c", pull_script(config, key)],
                                "env": [
                                    *server_env(config),
                                    {"name": "OLLAMA_HOST", "value": "127.0.0.1:11434"},
                                ],
                                "volume_mounts": [
                                    {"name": "models", "mount_path": MODELS_MOUNT},
                                    {"name": "modelfiles", "mount_path": MODELFILES_MOUNT, "read_only": True},
                                    {"name": "tmp", "mount_path": "/tmp"},
                                ],
                                "resources": {
                                    "requests": {"cpu": "500m", "memory": "1Gi"},
                                    "limits": {"cpu": "2", "memory": "2Gi"},
                                },
                                "security_context": restricted_container(),
                            }
                        ],
                        "volumes": [
                            models_volume,
                            {
                                "name": "modelfiles",
                                "config_map": {"name": modelfiles.metadata.apply(lambda m: m.name or "ollama-models")},
                            },
                            {"name": "tmp", "empty_dir": {}},
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[claim, modelfiles])),
        )

        marker = f"{MODELS_MOUNT}/.ready-{key}"
        wait: k8s.core.v1.ContainerArgsDict = {
            "name": "wait-for-models",
            "image": WAIT_IMAGE,
            "command": ["sh", "-c", f"until test -e {marker}; do echo waiting for {marker}; sleep 10; done"],
            "volume_mounts": [{"name": "models", "mount_path": MODELS_MOUNT, "read_only": True}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "16Mi"}},
            "security_context": restricted_container(),
        }
        container: k8s.core.v1.ContainerArgsDict = {
            "name": "ollama",
            "image": images.OLLAMA,
            "image_pull_policy": "IfNotPresent",
            "args": ["serve"],
            "env": [*server_env(config), {"name": "OLLAMA_HOST", "value": f"0.0.0.0:{BACKEND_PORT}"}],
            "volume_mounts": [
                {"name": "models", "mount_path": MODELS_MOUNT},
                {"name": "tmp", "mount_path": "/tmp"},
            ],
        }
        self.serving = ServingObjects(
            name,
            Workload(
                backend="ollama",
                config=config,
                container=container,
                volumes=[models_volume, {"name": "tmp", "empty_dir": {}}],
                # `GET /` answers "Ollama is running" without auth.
                probes=Probes(startup="/", readiness="/", liveness="/"),
                init_containers=(wait,),
                queue_query=demand_query(WORKLOAD_NAMESPACE, "ollama", None),
            ),
            platform,
            self,
        )
        self.register_outputs({"models_key": key})

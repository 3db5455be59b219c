"""The ONNX model conversion on Kubernetes: a shared model volume and a Job named after the
conversion key, so an unchanged stack never reruns it and a changed model or target does.

The Job writes /models/<key>/ (read-write); the ONNX backend mounts the same volume read-only and
waits for /models/<key>/conversion.json, which the converter writes last, inside the folder it
renames into place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import images
from infra.config import ConversionConfig
from infra.conversion_plan import conversion_spec, converter_arguments
from infra.k8s.pods import (
    DOWNLOADS_LABEL,
    WORKLOAD_UID,
    restricted_container,
    restricted_pod,
    scanner_annotations,
    tolerations,
)
from infra.k8s.volumes import model_claim

MODELS_MOUNT = "/models"
TOKEN_DIR = "/var/run/secrets/huggingface"  # noqa: S105 (a path)
TOKEN_FILE = "token"  # noqa: S105 (a file name)
CONVERTER_UID = WORKLOAD_UID
# The busybox the backend's wait step runs (pinned; only `test` and `sleep` are used).
WAIT_IMAGE = images.BUSYBOX


@dataclass(frozen=True)
class ModelConversionArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    conversion: ConversionConfig
    target: str
    storage_class: str | None
    access_mode: str
    size_gb: int
    hf_token: pulumi.Output[str] | None
    # Taints of the nodes the Job may run on (large nodes: the GPU pools), as "key=value:Effect".
    tolerate_taints: Sequence[str]
    labels: dict[str, str]


class ModelConversion(pulumi.ComponentResource):
    key: str
    model_path: str
    claim_name: pulumi.Output[str]

    def __init__(self, name: str, args: ModelConversionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:ModelConversion", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        conversion = args.conversion
        self.key = conversion_spec(conversion, args.target).key()
        self.model_path = f"{MODELS_MOUNT}/{self.key}"
        labels = {**args.labels, "app.kubernetes.io/component": "model-conversion"}

        claim = model_claim(
            f"{name}-models",
            claim="models",
            size_gb=args.size_gb,
            namespace=args.namespace,
            storage_class=args.storage_class,
            access_mode=args.access_mode,
            labels=labels,
            opts=child,
        )
        self.claim_name = claim.metadata.apply(lambda m: m.name or "models")

        volumes: list[k8s.core.v1.VolumeArgsDict] = [
            {"name": "models", "persistent_volume_claim": {"claim_name": self.claim_name}},
            {"name": "tmp", "empty_dir": {}},
        ]
        mounts: list[k8s.core.v1.VolumeMountArgsDict] = [
            {"name": "models", "mount_path": MODELS_MOUNT},
            {"name": "tmp", "mount_path": "/tmp"},
        ]
        env: list[k8s.core.v1.EnvVarArgsDict] = [
            {"name": "HF_HOME", "value": "/tmp/huggingface"},
            {"name": "OLIVE_DISABLE_TELEMETRY", "value": "1"},
            {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        ]
        if args.hf_token is not None:
            token = k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata={"name": "hf-token", "namespace": args.namespace, "labels": labels},
                type="Opaque",
                string_data={TOKEN_FILE: args.hf_token},
                opts=child,
            )
            volumes.append(
                {
                    "name": "hf-token",
                    "secret": {
                        "secret_name": token.metadata.apply(lambda m: m.name or "hf-token"),
                        "default_mode": 0o400,
                    },
                }
            )
            mounts.append({"name": "hf-token", "mount_path": TOKEN_DIR, "read_only": True})
            env.append({"name": "HF_TOKEN_PATH", "value": f"{TOKEN_DIR}/{TOKEN_FILE}"})

        command = converter_arguments(conversion, args.target, self.model_path)

        job_spec: k8s.batch.v1.JobSpecArgsDict = {
            "backoff_limit": 2,
            "active_deadline_seconds": conversion.deadline_minutes * 60,
            "template": {
                "metadata": {"labels": {**labels, "slm-serving/conversion-key": self.key, DOWNLOADS_LABEL: "true"}},
                "spec": {
                    "restart_policy": "Never",
                    "automount_service_account_token": False,
                    "security_context": restricted_pod(CONVERTER_UID),
                    "tolerations": tolerations(args.tolerate_taints),
                    "containers": [
                        {
                            "name": "convert",
                            "image": args.image,
                            "image_pull_policy": "IfNotPresent",
                            "args": command,
                            "env": env,
                            "volume_mounts": mounts,
                            "resources": {
                                "requests": {"cpu": conversion.cpu, "memory": conversion.memory},
                                "limits": {"cpu": conversion.cpu, "memory": conversion.memory},
                            },
                            "security_context": restricted_container(),
                        }
                    ],
                    "volumes": volumes,
                },
            },
        }
        k8s.batch.v1.Job(
            f"{name}-job",
            metadata={
                "name": f"convert-{self.key}",
                "namespace": args.namespace,
                "labels": {**labels, "slm-serving/conversion-key": self.key},
                # Don't hold `pulumi up` for the length of a conversion: the backend waits for it.
                "annotations": {"pulumi.com/skipAwait": "true", **scanner_annotations()},
            },
            spec=job_spec,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[claim])),
        )
        self.register_outputs({"key": self.key, "model_path": self.model_path})

    def backend_volume(self) -> k8s.core.v1.VolumeArgsDict:
        """The model volume as the ONNX backend mounts it: read-only."""
        return {"name": "models", "persistent_volume_claim": {"claim_name": self.claim_name, "read_only": True}}

    def backend_mount(self) -> k8s.core.v1.VolumeMountArgsDict:
        return {"name": "models", "mount_path": MODELS_MOUNT, "read_only": True}

    def wait_for_model(self) -> k8s.core.v1.ContainerArgsDict:
        """Init container for the ONNX backend: start only once the converted model is complete."""
        manifest = f"{self.model_path}/conversion.json"
        return {
            "name": "wait-for-model",
            "image": WAIT_IMAGE,
            "command": ["sh", "-c", f"until test -s {manifest}; do echo waiting for {manifest}; sleep 10; done"],
            "volume_mounts": [self.backend_mount()],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "16Mi"}},
            "security_context": {**restricted_container(), "run_as_user": 65534, "run_as_group": 65534},
        }

"""The persistent volumes models live on: one claim shared by every replica (ReadWriteMany on aks),
so a restart or a new replica never downloads or converts a model again."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s


def model_claim(
    name: str,
    *,
    claim: str,
    size_gb: int,
    namespace: pulumi.Input[str],
    storage_class: str | None,
    access_mode: str,
    labels: dict[str, str],
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.PersistentVolumeClaim:
    """A PersistentVolumeClaim for models; no storage class: the cluster's default."""
    spec: k8s.core.v1.PersistentVolumeClaimSpecArgsDict = {
        "access_modes": [access_mode],
        "resources": {"requests": {"storage": f"{size_gb}Gi"}},
    }
    if storage_class is not None:
        spec["storage_class_name"] = storage_class
    return k8s.core.v1.PersistentVolumeClaim(
        name, metadata={"name": claim, "namespace": namespace, "labels": labels}, spec=spec, opts=opts
    )

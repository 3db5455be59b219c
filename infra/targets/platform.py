"""What every target returns: the Kubernetes cluster the workloads run on (aks, cluster), or the
endpoints a target that runs its own workloads already serves (vm)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.endpoints import Endpoints


@dataclass(frozen=True)
class Cluster:
    """A Kubernetes cluster the same workloads run on, on aks and on any existing cluster."""

    provider: k8s.Provider
    registry: pulumi.Input[str]
    gpu_taints: tuple[str, ...] = ()
    # Labels every GPU pool's nodes carry (GPU pods select them).
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    # The host clients reach the gateway at, and how the gateway's Service gets that address.
    gateway_host: pulumi.Input[str] | None = None
    gateway_service_annotations: pulumi.Input[dict[str, str]] = field(default_factory=dict)
    # (image, variant) -> what workloads run: pushed by digest, or the build-context tag.
    image_refs: Mapping[tuple[str, str], pulumi.Output[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Platform:
    """A target's result: a cluster for the workloads, or the endpoints it serves itself."""

    cluster: Cluster | None = None
    endpoints: Endpoints | None = None

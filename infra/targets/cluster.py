"""Target `cluster`: any existing Kubernetes cluster from a kubeconfig; no Azure calls."""

from __future__ import annotations

from collections.abc import Mapping

from infra.config import StackConfig
from infra.k8s.cluster_access import ExistingCluster, ExistingClusterArgs
from infra.targets.images import own_images
from infra.targets.platform import Cluster, Platform


def build(cfg: StackConfig, tags: Mapping[str, str]) -> Platform:
    del tags  # Kubernetes objects carry labels, not Azure tags
    s = cfg.settings
    existing = ExistingCluster(
        f"slm-{cfg.stack}", ExistingClusterArgs(kubeconfig=cfg.secrets.kubeconfig, context=s.cluster.context)
    )
    return Platform(
        cluster=Cluster(
            provider=existing.provider,
            registry=s.cluster.registry,
            # GPU pods tolerate the GPU nodes' taints and select their labels (cluster.gpuNodes).
            gpu_taints=s.cluster.gpu_nodes.taints,
            gpu_node_selector=dict(s.cluster.gpu_nodes.labels),
            storage_class=s.storage.class_name,
            image_refs=own_images(cfg, s.cluster.registry),
        )
    )

"""A GPU user pool: tainted, autoscaled (to zero where allowed), optionally spot.

VM size and taints are fixed at pool creation. The Azure pool name carries a short hash of both, so a
change is a replacement that preview shows as such, and Pulumi's default create-before-delete adds
the new pool before it removes the old one.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import containerservice

from infra.config import GpuPoolConfig
from infra.vm_sizes import ephemeral_os_disk_fits

SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"


def pool_taints(pool: GpuPoolConfig) -> list[str]:
    # AKS adds the spot taint itself; declaring it keeps every later diff clean.
    return [*pool.taints, SPOT_TAINT] if pool.spot and SPOT_TAINT not in pool.taints else list(pool.taints)


def agent_pool_name(pool: GpuPoolConfig) -> str:
    """Config name + 4 hex chars of what forces a replacement (Linux pool names: <= 12 chars)."""
    fingerprint = "|".join([pool.vm_size, *sorted(pool_taints(pool))])
    return pool.name + hashlib.sha256(fingerprint.encode()).hexdigest()[:4]


@dataclass(frozen=True)
class GpuNodePoolArgs:
    resource_group_name: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    kubernetes_version: str | None
    encryption_at_host: bool
    pool: GpuPoolConfig
    tags: Mapping[str, str]


class GpuNodePool(pulumi.ComponentResource):
    agent_pool_name: str

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:GpuNodePool", name, None, opts)
        pool = args.pool
        self.agent_pool_name = agent_pool_name(pool)
        ephemeral = ephemeral_os_disk_fits(pool.vm_size, pool.os_disk_size_gb)
        containerservice.AgentPool(
            f"{name}-pool",
            resource_group_name=args.resource_group_name,
            resource_name_=args.cluster_name,
            agent_pool_name=self.agent_pool_name,
            mode="User",
            os_type="Linux",
            os_sku="Ubuntu",
            vm_size=pool.vm_size,
            vnet_subnet_id=args.subnet_id,
            orchestrator_version=args.kubernetes_version,
            enable_auto_scaling=True,
            min_count=pool.min_count,
            max_count=pool.max_count,
            count=pool.min_count,
            node_taints=pool_taints(pool),
            node_labels=dict(pool.labels),
            os_disk_type="Ephemeral" if ephemeral else "Managed",
            os_disk_size_gb=pool.os_disk_size_gb,
            # AKS installs the NVIDIA driver on the nodes.
            gpu_profile={"driver": "Install"},
            enable_encryption_at_host=args.encryption_at_host,
            max_pods=110,
            # Upgrade in place, one node at a time: never needs a second GPU node.
            upgrade_settings={"max_surge": "0", "max_unavailable": "1"},
            scale_set_priority="Spot" if pool.spot else "Regular",
            scale_set_eviction_policy=pool.eviction_policy if pool.spot else None,
            spot_max_price=pool.spot_max_price if pool.spot else None,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(
                parent=self,
                replace_on_changes=["agentPoolName", "vmSize", "nodeTaints"],
                # The cluster autoscaler owns the node count.
                ignore_changes=["count"],
            ),
        )
        self.register_outputs({"agent_pool_name": self.agent_pool_name})

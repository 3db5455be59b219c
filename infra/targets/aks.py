"""Target `aks`: the Azure foundation, Log Analytics, an AKS cluster with its GPU pools, and the
gateway's stable address; the workloads then run on it as on any cluster."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from infra.azure.aks import KubernetesCluster, KubernetesClusterArgs
from infra.azure.gateway_address import GatewayAddress, GatewayAddressArgs
from infra.azure.gpu_pool import pool_taints
from infra.azure.log_analytics import LogAnalytics, LogAnalyticsArgs
from infra.azure.network import InboundRule, SubnetSpec
from infra.config import StackConfig
from infra.endpoints import azure_dns_label, azure_host
from infra.targets.azure import foundation
from infra.targets.images import own_images
from infra.targets.platform import Cluster, Platform


def build(cfg: StackConfig, tags: Mapping[str, str]) -> Platform:
    s = cfg.settings
    protect = s.protect_resources
    allowed = [str(c) for c in s.allowed_cidrs]
    # Only the gateway's HTTPS port is published; the load balancer probes come from Azure's tag.
    inbound = [InboundRule("https", 443, allowed or ["Internet"])]
    if s.gateway.domain is not None:
        # ACME's HTTP-01 validation comes from anywhere; port 80 serves only the challenge and a redirect.
        inbound.append(InboundRule("http-acme", 80, ["Internet"]))
    base = foundation(cfg, tags, {"aks": SubnetSpec(str(s.network.aks_subnet), tuple(inbound))})
    image_refs = own_images(cfg, base.registry.login_server)
    logs = LogAnalytics(
        base.name,
        LogAnalyticsArgs(
            resource_group_name=base.group.name,
            location=s.location,
            retention_days=90 if s.environment == "prod" else 30,
            tags=dict(tags),
            protect=protect,
        ),
    )
    cluster = KubernetesCluster(
        base.name,
        KubernetesClusterArgs(
            resource_group_name=base.group.name,
            location=s.location,
            aks=s.aks,
            network=s.network,
            subnet_id=base.network.subnet_ids["aks"],
            log_analytics_workspace_id=logs.workspace_id,
            registry_id=base.registry.id,
            tenant_id=base.client.tenant_id,
            subscription_id=base.client.subscription_id,
            deployer_object_id=base.client.object_id,
            allowed_cidrs=allowed,
            encryption_at_host=s.encryption_at_host,
            tags=dict(tags),
            protect=protect,
        ),
    )
    pulumi.export("clusterName", cluster.name)
    pulumi.export("kubeconfig", cluster.kubeconfig)
    address = GatewayAddress(
        f"{base.name}-gateway",
        GatewayAddressArgs(
            resource_group_name=base.group.name,
            location=s.location,
            dns_label=azure_dns_label(s, cfg.stack),
            subnet_id=base.network.subnet_ids["aks"],
            subnet_cidr=str(s.network.aks_subnet),
            internal_only=s.gateway.internal_only,
            cluster_principal_id=cluster.principal_id,
            subscription_id=base.client.subscription_id,
            tags=dict(tags),
            protect=protect,
        ),
    )
    pools = s.aks.gpu_pools
    taints = tuple(dict.fromkeys(t for pool in pools for t in pool_taints(pool)))
    common_labels = dict(set.intersection(*(set(p.labels.items()) for p in pools))) if pools else {}
    return Platform(
        cluster=Cluster(
            provider=cluster.provider,
            registry=base.registry.login_server,
            gpu_taints=taints,
            gpu_node_selector=common_labels,
            # Azure Files: ReadWriteMany, so every replica shares one copy of the model.
            storage_class=s.storage.class_name or "azurefile-csi-premium",
            # Known before deployment: the certificate names it.
            gateway_host=s.gateway.domain or (address.host if s.gateway.internal_only else azure_host(s, cfg.stack)),
            gateway_service_annotations=address.service_annotations,
            image_refs=image_refs,
        )
    )

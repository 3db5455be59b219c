"""AKS: Entra ID RBAC only, network policy, managed upgrades.

Hands the cluster on as an explicit Kubernetes provider; the workloads never see Azure. They read
their secrets from Kubernetes Secrets the stack writes (the same objects on any cluster), so neither
the Key Vault CSI add-on nor workload identity is switched on: an identity nothing uses would only
be one more reader of the vault.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import containerservice

from infra.azure import roles
from infra.azure.gpu_pool import GpuNodePool, GpuNodePoolArgs
from infra.azure.kubeconfig import for_azure_cli
from infra.config import AksConfig, NetworkConfig
from infra.vm_sizes import ephemeral_os_disk_fits

SYSTEM_POOL = "system"


@dataclass(frozen=True)
class KubernetesClusterArgs:
    resource_group_name: pulumi.Output[str]
    location: str
    aks: AksConfig
    network: NetworkConfig
    subnet_id: pulumi.Input[str]
    log_analytics_workspace_id: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    deployer_object_id: pulumi.Input[str]
    allowed_cidrs: Sequence[str]
    encryption_at_host: bool
    tags: Mapping[str, str]
    protect: bool


class KubernetesCluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    oidc_issuer_url: pulumi.Output[str]
    gpu_pools: list[GpuNodePool]

    def __init__(self, name: str, args: KubernetesClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:KubernetesCluster", name, None, opts)
        aks = args.aks
        system = aks.system_pool
        net = args.network
        cluster = containerservice.ManagedCluster(
            f"{name}-aks",
            resource_group_name=args.resource_group_name,
            location=args.location,
            dns_prefix=name,
            kubernetes_version=aks.kubernetes_version,
            sku={"name": "Base", "tier": aks.tier},
            identity={"type": containerservice.ResourceIdentityType.SYSTEM_ASSIGNED},
            enable_rbac=True,
            disable_local_accounts=True,
            aad_profile={
                "managed": True,
                "enable_azure_rbac": True,
                "tenant_id": args.tenant_id,
                "admin_group_object_ids": list(aks.admin_group_object_ids),
            },
            api_server_access_profile={"authorized_ip_ranges": list(args.allowed_cidrs)}
            if args.allowed_cidrs
            else None,
            agent_pool_profiles=[
                {
                    "name": SYSTEM_POOL,
                    "mode": "System",
                    "os_type": "Linux",
                    "os_sku": "AzureLinux",
                    "type": "VirtualMachineScaleSets",
                    "vm_size": system.vm_size,
                    "enable_auto_scaling": True,
                    "min_count": system.min_count,
                    "max_count": system.max_count,
                    "count": system.min_count,
                    "max_pods": 110,
                    "os_disk_size_gb": system.os_disk_size_gb,
                    "os_disk_type": "Ephemeral"
                    if ephemeral_os_disk_fits(system.vm_size, system.os_disk_size_gb)
                    else "Managed",
                    "vnet_subnet_id": args.subnet_id,
                    "enable_encryption_at_host": args.encryption_at_host,
                    "upgrade_settings": {"max_surge": "33%"},
                }
            ],
            network_profile={
                "network_plugin": "azure",
                "network_plugin_mode": "overlay",
                "network_dataplane": "cilium",
                "network_policy": "cilium",
                "pod_cidr": str(net.pod_cidr),
                "service_cidr": str(net.service_cidr),
                "dns_service_ip": str(net.dns_service_ip),
                "load_balancer_sku": "standard",
                "outbound_type": "loadBalancer",
            },
            # AKS cannot switch the issuer off once it is on (existing clusters have it); it grants nothing.
            oidc_issuer_profile={"enabled": True},
            security_profile={
                # Off explicitly, so existing clusters turn it off: no workload federates an identity.
                "workload_identity": {"enabled": False},
                "image_cleaner": {"enabled": True, "interval_hours": 48},
            },
            addon_profiles={
                # Off explicitly (see the module docstring): its identity and vault role went with it.
                "azureKeyvaultSecretsProvider": {"enabled": False},
                "omsagent": {
                    "enabled": True,
                    "config": {"logAnalyticsWorkspaceResourceID": args.log_analytics_workspace_id},
                },
                "azurepolicy": {"enabled": True},
            },
            auto_upgrade_profile={
                "upgrade_channel": aks.upgrade_channel,
                "node_os_upgrade_channel": aks.node_os_upgrade_channel,
            },
            storage_profile={
                "disk_csi_driver": {"enabled": True},
                # Azure Files backs the ReadWriteMany model cache.
                "file_csi_driver": {"enabled": True},
                "snapshot_controller": {"enabled": True},
            },
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(
                parent=self,
                protect=args.protect,
                # The autoscaler owns the system pool's count.
                ignore_changes=["agentPoolProfiles[0].count"],
            ),
        )
        self.name = cluster.name
        # The control plane's identity: it joins load balancers to the subnet and the gateway's address.
        self.principal_id = cluster.identity.apply(lambda i: (i.principal_id if i else None) or "")

        window = aks.maintenance_window
        for config_name in ("aksManagedAutoUpgradeSchedule", "aksManagedNodeOSUpgradeSchedule"):
            containerservice.MaintenanceConfiguration(
                f"{name}-{config_name}",
                resource_group_name=args.resource_group_name,
                resource_name_=cluster.name,
                config_name=config_name,
                maintenance_window={
                    "schedule": {"weekly": {"day_of_week": window.day, "interval_weeks": 1}},
                    "duration_hours": window.duration_hours,
                    "start_time": f"{window.start_hour:02d}:00",
                    "utc_offset": "+00:00",
                },
                opts=pulumi.ResourceOptions(parent=self),
            )

        self.gpu_pools = [
            GpuNodePool(
                f"{name}-gpu-{pool.name}",
                GpuNodePoolArgs(
                    resource_group_name=args.resource_group_name,
                    cluster_name=cluster.name,
                    subnet_id=args.subnet_id,
                    kubernetes_version=aks.kubernetes_version,
                    encryption_at_host=args.encryption_at_host,
                    pool=pool,
                    tags=args.tags,
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            for pool in aks.gpu_pools
        ]

        kubelet_object_id = cluster.identity_profile.apply(
            lambda profile: (profile or {})["kubeletidentity"].object_id or ""
        )
        roles.assign_role(
            f"{name}-acr-pull",
            subscription_id=args.subscription_id,
            role_id=roles.ACR_PULL,
            principal_id=kubelet_object_id,
            scope=args.registry_id,
            parent=self,
        )
        # The deployer (a person or the CI identity) applies the workloads through Entra RBAC.
        deployer_admin = roles.assign_role(
            f"{name}-deployer-admin",
            subscription_id=args.subscription_id,
            role_id=roles.AKS_RBAC_CLUSTER_ADMIN,
            principal_id=args.deployer_object_id,
            principal_type=None,
            scope=cluster.id,
            parent=self,
        )

        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=args.resource_group_name,
            resource_name=cluster.name,
            # Unknown during the first preview (the cluster does not exist yet) instead of failing.
            opts=pulumi.InvokeOutputOptions(parent=self, depends_on=[cluster]),
        )
        self.kubeconfig = pulumi.Output.secret(credentials.kubeconfigs[0].value.apply(for_azure_cli))
        self.oidc_issuer_url = cluster.oidc_issuer_profile.apply(lambda p: (p.issuer_url if p else None) or "")
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # Replace the provider (and so every object) only if the cluster itself is replaced.
            cluster_identifier=cluster.id,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[deployer_admin]),
        )
        self.register_outputs(
            {
                "name": self.name,
                "kubeconfig": self.kubeconfig,
                "oidc_issuer_url": self.oidc_issuer_url,
            }
        )

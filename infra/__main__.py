"""The slm-serving Pulumi program: config -> cloud (aks, vm) or existing cluster -> workloads -> exports.

`pulumi up` runs this file with sys.path[0] set to infra/ itself; the project root goes first instead,
so `infra.*` imports resolve and infra/azure can never shadow another top-level package.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = _ROOT
elif _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402
import pulumi_kubernetes as k8s  # noqa: E402
from pulumi_azure_native import authorization, resources  # noqa: E402

from infra import config  # noqa: E402
from infra.azure.aks import KubernetesCluster, KubernetesClusterArgs  # noqa: E402
from infra.azure.gpu_pool import pool_taints  # noqa: E402
from infra.azure.keyvault import GRAFANA_PASSWORD_SECRET, HF_TOKEN_SECRET, SecretVault, SecretVaultArgs  # noqa: E402
from infra.azure.log_analytics import LogAnalytics, LogAnalyticsArgs  # noqa: E402
from infra.azure.network import InboundRule, Network, NetworkArgs, SubnetSpec  # noqa: E402
from infra.azure.registry import ContainerRegistry, ContainerRegistryArgs  # noqa: E402
from infra.azure.vm import ServingVm, ServingVmArgs  # noqa: E402
from infra.compose import compose_project  # noqa: E402
from infra.images import image_ref  # noqa: E402
from infra.k8s.cluster_access import ExistingCluster, ExistingClusterArgs  # noqa: E402
from infra.k8s.conversion import ModelConversion, ModelConversionArgs  # noqa: E402
from infra.k8s.namespaces import WorkloadNamespace, WorkloadNamespaceArgs  # noqa: E402
from infra.tags import stack_tags  # noqa: E402


@dataclass(frozen=True)
class Platform:
    """What the cloud layer (or an existing cluster) hands to the workloads."""

    provider: k8s.Provider | None  # None on `vm`: Compose, not Kubernetes
    registry: pulumi.Input[str]
    gpu_taints: tuple[str, ...] = ()
    storage_class: str | None = None


def _azure(cfg: config.StackConfig, tags: dict[str, str]) -> Platform:
    """Build the Azure layer: the cluster (aks) or the VM (vm)."""
    s = cfg.settings
    name = f"slm-{cfg.stack}"
    protect = s.protect_resources
    allowed = [str(c) for c in s.allowed_cidrs]
    client = authorization.get_client_config_output()

    group = resources.ResourceGroup(
        f"{name}-rg", location=s.location, tags=tags, opts=pulumi.ResourceOptions(protect=protect)
    )
    if s.target == "aks":
        # Only the gateway's HTTPS port is published; the load balancer probes come from Azure's tag.
        subnets = {"aks": SubnetSpec(str(s.network.aks_subnet), (InboundRule("https", 443, allowed or ["Internet"]),))}
    else:
        subnets = {
            "vm": SubnetSpec(
                str(s.network.vm_subnet),
                (InboundRule("ssh", 22, allowed), InboundRule("https", 443, allowed)),
            )
        }
    net = Network(
        name,
        NetworkArgs(
            resource_group_name=group.name,
            location=s.location,
            address_space=str(s.network.address_space),
            subnets=subnets,
            tags=tags,
        ),
    )
    registry = ContainerRegistry(
        name,
        ContainerRegistryArgs(
            resource_group_name=group.name,
            location=s.location,
            sku=s.registry.sku,
            tags=tags,
            protect=protect,
        ),
    )
    assert cfg.secrets.hf_token is not None  # config.load requires it for Azure targets
    vault = SecretVault(
        name,
        SecretVaultArgs(
            resource_group_name=group.name,
            location=s.location,
            tenant_id=client.tenant_id,
            subnet_ids=list(net.subnet_ids.values()),
            allowed_cidrs=allowed,
            soft_delete_retention_days=s.key_vault.soft_delete_retention_days,
            purge_protection=s.purge_protection,
            hf_token=cfg.secrets.hf_token,
            # The VM's Grafana reads its admin password from Key Vault at boot.
            generated_secrets=(GRAFANA_PASSWORD_SECRET,) if s.target == "vm" else (),
            tags=tags,
            protect=protect,
        ),
    )
    pulumi.export("resourceGroup", group.name)
    pulumi.export("registryLoginServer", registry.login_server)

    if s.target == "vm":
        vm = ServingVm(
            name,
            ServingVmArgs(
                resource_group_name=group.name,
                location=s.location,
                vm=s.vm,
                subnet_id=net.subnet_ids["vm"],
                registry_id=registry.id,
                key_vault_id=vault.id,
                key_vault_uri=vault.uri,
                secrets=((HF_TOKEN_SECRET, "hf_token"), (GRAFANA_PASSWORD_SECRET, "grafana_admin_password")),
                registry_login_server=registry.login_server,
                subscription_id=client.subscription_id,
                compose_yaml=registry.login_server.apply(
                    lambda server: compose_project(s, image_ref(server, "converter"))
                ),
                encryption_at_host=s.encryption_at_host,
                tags=tags,
                protect=protect,
            ),
        )
        pulumi.export("vmAddress", vm.public_ip)
        pulumi.export("grafanaAdminPassword", pulumi.Output.secret(vault.generated[GRAFANA_PASSWORD_SECRET]))
        pulumi.export("vmAdminUser", vm.admin_username)
        if vm.ssh_private_key is not None:
            pulumi.export("vmSshPrivateKey", vm.ssh_private_key)
        return Platform(provider=None, registry=registry.login_server)

    logs = LogAnalytics(
        name,
        LogAnalyticsArgs(
            resource_group_name=group.name,
            location=s.location,
            retention_days=90 if s.environment == "prod" else 30,
            tags=tags,
            protect=protect,
        ),
    )
    cluster = KubernetesCluster(
        name,
        KubernetesClusterArgs(
            resource_group_name=group.name,
            location=s.location,
            aks=s.aks,
            network=s.network,
            subnet_id=net.subnet_ids["aks"],
            log_analytics_workspace_id=logs.workspace_id,
            registry_id=registry.id,
            key_vault_id=vault.id,
            tenant_id=client.tenant_id,
            subscription_id=client.subscription_id,
            deployer_object_id=client.object_id,
            allowed_cidrs=allowed,
            encryption_at_host=s.encryption_at_host,
            tags=tags,
            protect=protect,
        ),
    )
    pulumi.export("clusterName", cluster.name)
    pulumi.export("kubeconfig", cluster.kubeconfig)
    taints = tuple(dict.fromkeys(t for pool in s.aks.gpu_pools for t in pool_taints(pool)))
    return Platform(
        provider=cluster.provider,
        registry=registry.login_server,
        gpu_taints=taints,
        # Azure Files: ReadWriteMany, so every replica shares one copy of the model.
        storage_class=s.storage.class_name or "azurefile-csi-premium",
    )


def _workloads(cfg: config.StackConfig, platform: Platform) -> None:
    """Everything above the cluster: the same code on aks and on any existing cluster."""
    s = cfg.settings
    assert platform.provider is not None
    labels = {"app.kubernetes.io/part-of": "slm-serving", "slm-serving/stack": cfg.stack}
    namespace = WorkloadNamespace(f"slm-{cfg.stack}", WorkloadNamespaceArgs(provider=platform.provider, labels=labels))
    onnx = s.backends.onnx
    if onnx.enabled:
        ModelConversion(
            f"slm-{cfg.stack}-onnx",
            ModelConversionArgs(
                provider=platform.provider,
                namespace=namespace.name,
                image=pulumi.Output.from_input(platform.registry).apply(lambda r: image_ref(r, "converter")),
                conversion=onnx.conversion,
                target=onnx.conversion_target,
                storage_class=platform.storage_class,
                access_mode=s.storage.access_mode,
                size_gb=s.storage.size_gb,
                hf_token=cfg.secrets.hf_token,
                tolerate_taints=platform.gpu_taints,
                labels=labels,
            ),
            opts=pulumi.ResourceOptions(depends_on=[namespace]),
        )


def main() -> None:
    cfg = config.load()
    s = cfg.settings
    tags = stack_tags(s, cfg.project, cfg.stack)
    pulumi.export("target", s.target)

    if s.is_azure:
        platform = _azure(cfg, tags)
    else:
        cluster = ExistingCluster(
            f"slm-{cfg.stack}",
            ExistingClusterArgs(kubeconfig=cfg.secrets.kubeconfig, context=s.cluster.context),
        )
        platform = Platform(provider=cluster.provider, registry=s.cluster.registry, storage_class=s.storage.class_name)

    if platform.provider is not None:
        _workloads(cfg, platform)


main()

"""The slm-serving Pulumi program: config -> cloud (aks, vm) or existing cluster -> workloads -> exports.

`pulumi up` runs this file with sys.path[0] set to infra/ itself; the project root goes first instead,
so `infra.*` imports resolve and infra/azure can never shadow another top-level package.
"""

import sys
from dataclasses import dataclass, field
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
from infra.azure.gateway_address import GatewayAddress, GatewayAddressArgs  # noqa: E402
from infra.azure.gpu_pool import pool_taints  # noqa: E402
from infra.azure.keyvault import GRAFANA_PASSWORD_SECRET, SecretVault, SecretVaultArgs, api_key_secret  # noqa: E402
from infra.azure.log_analytics import LogAnalytics, LogAnalyticsArgs  # noqa: E402
from infra.azure.network import InboundRule, Network, NetworkArgs, SubnetSpec  # noqa: E402
from infra.azure.registry import ContainerRegistry, ContainerRegistryArgs  # noqa: E402
from infra.azure.vm import ServingVm, ServingVmArgs  # noqa: E402
from infra.compose import compose_project, vm_generated_secrets, vm_secret_files  # noqa: E402
from infra.endpoints import (  # noqa: E402
    BACKEND_PORT,
    azure_dns_label,
    azure_host,
    public_base_url,
    routes,
    web_ui_url,
)
from infra.images import Build, StackImages, StackImagesArgs  # noqa: E402
from infra.k8s.addons import ClusterAddons, ClusterAddonsArgs  # noqa: E402
from infra.k8s.api_keys import ApiKeys, ApiKeysArgs  # noqa: E402
from infra.k8s.backends.ollama import OllamaBackend, OllamaBackendArgs  # noqa: E402
from infra.k8s.backends.onnx import OnnxBackend, OnnxBackendArgs  # noqa: E402
from infra.k8s.backends.serving import BackendPlatform  # noqa: E402
from infra.k8s.backends.vllm import VllmBackend, VllmBackendArgs  # noqa: E402
from infra.k8s.cluster_access import ExistingCluster, ExistingClusterArgs  # noqa: E402
from infra.k8s.conversion import ModelConversion, ModelConversionArgs  # noqa: E402
from infra.k8s.gateway import PROXY_NAMESPACE, PROXY_POD_LABELS, ServingGateway, ServingGatewayArgs  # noqa: E402
from infra.k8s.monitoring import RECEIVERS_MOUNT, MonitoringArgs, MonitoringStack  # noqa: E402
from infra.k8s.namespaces import WORKLOAD_NAMESPACE, WorkloadNamespace, WorkloadNamespaceArgs  # noqa: E402
from infra.k8s.network_policies import WorkloadNetworkPolicies, WorkloadNetworkPoliciesArgs  # noqa: E402
from infra.k8s.web_ui import WebUi, WebUiArgs  # noqa: E402
from infra.monitoring_files import alertmanager_document, dashboards, rule_files  # noqa: E402
from infra.tags import stack_tags  # noqa: E402


@dataclass(frozen=True)
class Platform:
    """What the cloud layer (or an existing cluster) hands to the workloads."""

    provider: k8s.Provider | None  # None on `vm`: Compose, not Kubernetes
    registry: pulumi.Input[str]
    gpu_taints: tuple[str, ...] = ()
    # Labels every GPU pool's nodes carry (GPU pods select them).
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    # The host clients reach the gateway at, and how the gateway's Service gets that address.
    gateway_host: pulumi.Input[str] | None = None
    gateway_service_annotations: pulumi.Input[dict[str, str]] = field(default_factory=dict)
    # (image, variant) -> what workloads run: pushed by digest, or the build-context tag.
    image_refs: dict[tuple[str, str], pulumi.Output[str]] = field(default_factory=dict)


def _onnx_variant(s: config.StackSettings) -> str:
    return "cuda" if s.backends.onnx.device == "gpu" else "cpu"


def _images(cfg: config.StackConfig, registry: pulumi.Input[str]) -> dict[tuple[str, str], pulumi.Output[str]]:
    """Build and push the stack's own images (only what an enabled backend runs)."""
    s = cfg.settings
    if not s.backends.onnx.enabled:
        return {}
    images = StackImages(
        f"slm-{cfg.stack}-images",
        StackImagesArgs(
            registry=registry,
            mode=s.images.build,
            builds=(Build("converter"), Build("onnx-server", _onnx_variant(s))),
            entra_login=s.is_azure,
        ),
    )
    return images.refs


def _export_vm_endpoints(s: config.StackSettings, host: str, public_ip: pulumi.Output[str], vault: SecretVault) -> None:
    """The same `endpoints`, `apiKeys` and `apiKey` exports as the Kubernetes targets, for the VM's proxy."""
    keys = pulumi.Output.secret(
        pulumi.Output.all(**{c: vault.generated[api_key_secret(c)] for c in s.gateway.api_key_clients})
    )
    pulumi.export(
        "endpoints",
        public_ip.apply(
            lambda ip: {
                "gateway": {"address": host, "ip": ip},
                "backends": {
                    r.backend: {
                        "baseUrl": public_base_url(s, r, host),
                        "model": r.models[0],
                        "models": list(r.models),
                    }
                    for r in routes(s)
                },
                **({"webUi": web_ui_url(s, host)} if s.web_ui.enabled else {}),
            }
        ),
    )
    pulumi.export("apiKeys", keys)
    pulumi.export("apiKey", keys.apply(lambda k: k[s.gateway.api_key_clients[0]]))


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
        inbound = [InboundRule("https", 443, allowed or ["Internet"])]
        if s.gateway.domain is not None:
            # ACME's HTTP-01 validation comes from anywhere; port 80 serves only the challenge and a redirect.
            inbound.append(InboundRule("http-acme", 80, ["Internet"]))
        subnets = {"aks": SubnetSpec(str(s.network.aks_subnet), tuple(inbound))}
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
            # The VM reads these at boot: Grafana's admin password, one API key per client (and Open
            # WebUI's session key when it runs).
            generated_secrets=vm_generated_secrets(s) if s.target == "vm" else (),
            tags=tags,
            protect=protect,
        ),
    )
    pulumi.export("resourceGroup", group.name)
    pulumi.export("registryLoginServer", registry.login_server)

    image_refs = _images(cfg, registry.login_server)
    if s.target == "vm":
        vm_host = s.gateway.domain or azure_host(s, cfg.stack)
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
                secrets=vm_secret_files(s),
                registry_login_server=registry.login_server,
                subscription_id=client.subscription_id,
                compose_yaml=pulumi.Output.all(registry.login_server, *image_refs.values()).apply(
                    lambda parts: compose_project(
                        s, parts[0], dict(zip(image_refs, parts[1:], strict=True)), public_host=vm_host
                    )
                ),
                encryption_at_host=s.encryption_at_host,
                tags=tags,
                protect=protect,
                dns_label=azure_dns_label(s, cfg.stack),
            ),
        )
        pulumi.export("vmAddress", vm.public_ip)
        pulumi.export("grafanaAdminPassword", pulumi.Output.secret(vault.generated[GRAFANA_PASSWORD_SECRET]))
        pulumi.export("vmAdminUser", vm.admin_username)
        _export_vm_endpoints(s, vm_host, vm.public_ip, vault)
        if vm.ssh_private_key is not None:
            pulumi.export("vmSshPrivateKey", vm.ssh_private_key)
        return Platform(provider=None, registry=registry.login_server, image_refs=image_refs)

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
    address = GatewayAddress(
        f"{name}-gateway",
        GatewayAddressArgs(
            resource_group_name=group.name,
            location=s.location,
            dns_label=azure_dns_label(s, cfg.stack),
            subnet_id=net.subnet_ids["aks"],
            subnet_cidr=str(s.network.aks_subnet),
            internal_only=s.gateway.internal_only,
            cluster_principal_id=cluster.principal_id,
            subscription_id=client.subscription_id,
            tags=tags,
            protect=protect,
        ),
    )
    pools = s.aks.gpu_pools
    taints = tuple(dict.fromkeys(t for pool in pools for t in pool_taints(pool)))
    common_labels = dict(set.intersection(*(set(p.labels.items()) for p in pools))) if pools else {}
    return Platform(
        provider=cluster.provider,
        registry=registry.login_server,
        gpu_taints=taints,
        gpu_node_selector=common_labels,
        # Azure Files: ReadWriteMany, so every replica shares one copy of the model.
        storage_class=s.storage.class_name or "azurefile-csi-premium",
        # Known before deployment: the certificate names it.
        gateway_host=s.gateway.domain or (address.host if s.gateway.internal_only else azure_host(s, cfg.stack)),
        gateway_service_annotations=address.service_annotations,
        image_refs=image_refs,
    )


def _workloads(cfg: config.StackConfig, platform: Platform) -> None:
    """Everything above the cluster: the same code on aks and on any existing cluster."""
    s = cfg.settings
    provider = platform.provider
    assert provider is not None
    labels = {"app.kubernetes.io/part-of": "slm-serving", "slm-serving/stack": cfg.stack}
    name = f"slm-{cfg.stack}"
    namespace = WorkloadNamespace(name, WorkloadNamespaceArgs(provider=provider, labels=labels))
    in_namespace = pulumi.ResourceOptions(depends_on=[namespace])
    addons = ClusterAddons(
        name,
        ClusterAddonsArgs(
            provider=provider, config=s.addons, uses_gpu=s.uses_gpu, gpu_taints=platform.gpu_taints, labels=labels
        ),
    )
    keys = ApiKeys(
        f"{name}-api-keys",
        ApiKeysArgs(provider=provider, namespace=namespace.name, clients=s.gateway.api_key_clients, labels=labels),
        opts=in_namespace,
    )
    backend_platform = BackendPlatform(
        provider=provider,
        namespace=namespace.name,
        labels=labels,
        gpu_taints=platform.gpu_taints,
        gpu_node_selector=platform.gpu_node_selector,
        storage_class=platform.storage_class,
        access_mode=s.storage.access_mode,
        prometheus_url=s.monitoring.prometheus_url,
        scaler_depends_on=addons.keda_dependencies,
    )
    backend_opts = in_namespace
    b = s.backends
    if b.vllm.enabled:
        VllmBackend(
            f"{name}-vllm",
            VllmBackendArgs(
                platform=backend_platform,
                config=b.vllm,
                api_keys_secret=keys.backend_secret,
                hf_token=cfg.secrets.hf_token,
            ),
            opts=backend_opts,
        )
    if b.ollama.enabled:
        OllamaBackend(
            f"{name}-ollama", OllamaBackendArgs(platform=backend_platform, config=b.ollama), opts=backend_opts
        )
    if b.onnx.enabled:
        conversion = ModelConversion(
            f"{name}-onnx",
            ModelConversionArgs(
                provider=provider,
                namespace=namespace.name,
                image=platform.image_refs[("converter", "cpu")],
                conversion=b.onnx.conversion,
                target=b.onnx.conversion_target,
                storage_class=platform.storage_class,
                access_mode=s.storage.access_mode,
                size_gb=s.storage.size_gb,
                hf_token=cfg.secrets.hf_token,
                tolerate_taints=platform.gpu_taints,
                labels=labels,
            ),
            opts=in_namespace,
        )
        OnnxBackend(
            f"{name}-onnx-server",
            OnnxBackendArgs(
                platform=backend_platform,
                config=b.onnx,
                image=platform.image_refs[("onnx-server", _onnx_variant(s))],
                conversion=conversion,
                api_keys_secret=keys.backend_secret,
            ),
            opts=backend_opts,
        )

    served = routes(s)
    in_cluster = {r.backend: f"http://{r.backend}.{WORKLOAD_NAMESPACE}.svc:{BACKEND_PORT}/v1" for r in served}
    web_ui = None
    if s.web_ui.enabled:
        web_ui = WebUi(
            f"{name}-web-ui",
            WebUiArgs(
                provider=provider,
                namespace=namespace.name,
                labels=labels,
                backend_urls=list(in_cluster.values()),
                api_keys_secret=keys.backend_secret,
                storage_class=platform.storage_class,
                access_mode=s.storage.access_mode,
            ),
            opts=in_namespace,
        )
    gateway = ServingGateway(
        f"{name}-gateway",
        ServingGatewayArgs(
            provider=provider,
            namespace=namespace.name,
            config=s.gateway,
            routes=served,
            api_keys_secret=keys.gateway_secret,
            labels=labels,
            service_annotations=platform.gateway_service_annotations,
            extra_hosts=pulumi.Output.from_input(platform.gateway_host or s.gateway.address or "").apply(
                lambda h: [h.split(":", 1)[0]] if h else []
            ),
            web_ui=web_ui is not None,
            depends_on=[namespace, *addons.gateway_dependencies],
        ),
    )
    WorkloadNetworkPolicies(
        name,
        WorkloadNetworkPoliciesArgs(
            provider=provider,
            namespace=namespace.name,
            labels=labels,
            gateway_namespace=PROXY_NAMESPACE,
            gateway_pod_labels=PROXY_POD_LABELS,
            monitoring_namespace=s.monitoring.namespace,
            web_ui_labels=web_ui.labels if web_ui is not None else None,
        ),
        opts=in_namespace,
    )

    monitoring = MonitoringStack(
        f"{name}-monitoring",
        MonitoringArgs(
            provider=provider,
            config=s.monitoring,
            metrics_backends=[r.backend for r in served if r.backend != "ollama"],
            workload_namespace=namespace.name,
            rule_files=rule_files(s),
            dashboards=dashboards(),
            alertmanager=alertmanager_document(s, url_file_dir=RECEIVERS_MOUNT),
            uses_gpu=s.uses_gpu,
            gpu_taints=platform.gpu_taints,
            labels=labels,
            receiver_urls={
                r.name: pulumi.Output.secret(r.webhook_url) for r in s.monitoring.receivers if r.webhook_url
            },
            gateway_depends_on=addons.gateway_dependencies,
        ),
        opts=in_namespace,
    )
    if monitoring.grafana_password is not None:
        pulumi.export("grafanaAdminPassword", monitoring.grafana_password)

    host = pulumi.Output.from_input(platform.gateway_host or s.gateway.address or gateway.in_cluster_host)
    pulumi.export(
        "endpoints",
        host.apply(
            lambda address: {
                "gateway": {"address": address, "inClusterUrl": f"https://{gateway.in_cluster_host}"},
                "backends": {
                    r.backend: {
                        "baseUrl": public_base_url(s, r, address),
                        "model": r.models[0],
                        "models": list(r.models),
                        "inClusterUrl": in_cluster[r.backend],
                    }
                    for r in served
                },
                **({"webUi": web_ui_url(s, address)} if web_ui is not None else {}),
            }
        ),
    )
    pulumi.export("apiKeys", keys.keys)
    pulumi.export("apiKey", keys.keys.apply(lambda k: k[s.gateway.api_key_clients[0]]))


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
        platform = Platform(
            provider=cluster.provider,
            registry=s.cluster.registry,
            storage_class=s.storage.class_name,
            image_refs=_images(cfg, s.cluster.registry),
        )

    if platform.provider is not None:
        _workloads(cfg, platform)


main()

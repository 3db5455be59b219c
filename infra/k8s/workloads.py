"""Everything above the cluster, the same on aks and on any existing cluster: the namespace, the
add-ons, the API keys, every enabled backend from its description, Open WebUI, the gateway, the
network policies and monitoring. Returns what the exports need."""

from __future__ import annotations

import pulumi

from infra.backends import registry
from infra.backends.description import Paths
from infra.config import StackConfig
from infra.conventions import API_KEYS_FILE, HF_TOKEN_FILE
from infra.endpoints import Endpoints, routes
from infra.k8s.addons import CERT_MANAGER, ClusterAddons, ClusterAddonsArgs
from infra.k8s.api_keys import ApiKeys, ApiKeysArgs
from infra.k8s.backend import SECRETS_MOUNT, BackendArgs, BackendPlatform, BackendWorkload, SecretSource
from infra.k8s.gateway import PROXY_NAMESPACE, PROXY_POD_LABELS, ServingGateway, ServingGatewayArgs
from infra.k8s.hub_token import HubToken, HubTokenArgs
from infra.k8s.monitoring import RECEIVERS_MOUNT, MonitoringArgs, MonitoringStack
from infra.k8s.namespaces import WORKLOAD_NAMESPACE, WorkloadNamespace, WorkloadNamespaceArgs
from infra.k8s.network_policies import WorkloadNetworkPolicies, WorkloadNetworkPoliciesArgs
from infra.k8s.web_ui import WebUi, WebUiArgs
from infra.monitoring_files import alertmanager_document, dashboards, target_rule_files
from infra.targets.platform import Cluster


def workloads(cfg: StackConfig, cluster: Cluster) -> Endpoints:
    s = cfg.settings
    provider = cluster.provider
    labels = {"app.kubernetes.io/part-of": "slm-serving", "slm-serving/stack": cfg.stack}
    name = f"slm-{cfg.stack}"
    namespace = WorkloadNamespace(name, WorkloadNamespaceArgs(provider=provider, labels=labels))
    in_namespace = pulumi.ResourceOptions(depends_on=[namespace])
    addons = ClusterAddons(
        name,
        ClusterAddonsArgs(
            provider=provider, config=s.addons, uses_gpu=s.uses_gpu, gpu_taints=cluster.gpu_taints, labels=labels
        ),
    )
    keys = ApiKeys(
        f"{name}-api-keys",
        ApiKeysArgs(provider=provider, namespace=namespace.name, clients=s.gateway.api_key_clients, labels=labels),
        opts=in_namespace,
    )
    secrets = {API_KEYS_FILE: SecretSource(keys.backend_secret, API_KEYS_FILE)}
    if cfg.secrets.hf_token is not None:
        token = HubToken(
            f"{name}-hf-token",
            HubTokenArgs(provider=provider, namespace=namespace.name, token=cfg.secrets.hf_token, labels=labels),
            opts=in_namespace,
        )
        secrets[HF_TOKEN_FILE] = SecretSource(token.secret_name, HF_TOKEN_FILE)
    platform = BackendPlatform(
        provider=provider,
        namespace=namespace.name,
        labels=labels,
        gpu_taints=cluster.gpu_taints,
        gpu_node_selector=cluster.gpu_node_selector,
        storage_class=cluster.storage_class,
        access_mode=s.storage.access_mode,
        storage_size_gb=s.storage.size_gb,
        prometheus_url=s.monitoring.prometheus_url,
        scaler_depends_on=addons.keda_dependencies,
        secrets=secrets,
        image_refs=cluster.image_refs,
    )
    described = registry.enabled(s.backends, Paths(secrets=SECRETS_MOUNT, hf_token=cfg.secrets.hf_token is not None))
    for backend in described:
        BackendWorkload(f"{name}-{backend.name}", BackendArgs(platform, backend), opts=in_namespace)

    served = routes(s)
    in_cluster = {b.name: f"http://{b.name}.{WORKLOAD_NAMESPACE}.svc:{b.port}/v1" for b in described}
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
                storage_class=cluster.storage_class,
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
            service_annotations=cluster.gateway_service_annotations,
            extra_hosts=pulumi.Output.from_input(cluster.gateway_host or s.gateway.address or "").apply(
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
            metrics_backends=[b.name for b in described if b.metrics is not None],
            web_ui_labels=web_ui.labels if web_ui is not None else None,
            acme_solver=s.gateway.domain is not None,
        ),
        opts=in_namespace,
    )
    monitoring = MonitoringStack(
        f"{name}-monitoring",
        MonitoringArgs(
            provider=provider,
            config=s.monitoring,
            metrics_backends=[b.name for b in described if b.metrics is not None],
            workload_namespace=namespace.name,
            rule_files=target_rule_files(s),
            dashboards=dashboards(),
            alertmanager=alertmanager_document(s, url_file_dir=RECEIVERS_MOUNT),
            uses_gpu=s.uses_gpu,
            gpu_taints=cluster.gpu_taints,
            labels=labels,
            receiver_urls={
                r.name: pulumi.Output.secret(r.webhook_url) for r in s.monitoring.receivers if r.webhook_url
            },
            gateway_depends_on=addons.gateway_dependencies,
            cert_manager_namespace=CERT_MANAGER.namespace if s.addons.cert_manager else None,
            cert_manager_depends_on=addons.gateway_dependencies,
        ),
        opts=in_namespace,
    )
    if monitoring.grafana_password is not None:
        pulumi.export("grafanaAdminPassword", monitoring.grafana_password)
    return Endpoints(
        address=pulumi.Output.from_input(cluster.gateway_host or s.gateway.address or gateway.in_cluster_host),
        api_keys=keys.keys,
        gateway={"inClusterUrl": f"https://{gateway.in_cluster_host}"},
        in_cluster=in_cluster,
        web_ui=web_ui is not None,
    )

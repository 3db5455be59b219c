"""Cluster add-ons from pinned Helm charts: the NVIDIA device plugin, Envoy Gateway (with the Gateway
API CRDs), cert-manager and KEDA. Each can be switched off when the cluster already runs it; objects
that need an add-on's CRDs depend on its chart, so they are created after it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.config import AddonsConfig
from infra.k8s.pods import tolerations


@dataclass(frozen=True)
class HelmChart:
    chart: str
    version: str
    repo: str | None  # None: `chart` is an OCI reference
    namespace: str
    # Pod Security Standard for the add-on's namespace (the device plugin needs host paths).
    pod_security: str = "restricted"


DEVICE_PLUGIN = HelmChart(
    "nvidia-device-plugin", "0.18.0", "https://nvidia.github.io/k8s-device-plugin", "nvidia-device-plugin", "privileged"
)
# Ships the Gateway API CRDs (v1.4) and its own (SecurityPolicy, EnvoyProxy, ...) in crds/.
ENVOY_GATEWAY = HelmChart("oci://docker.io/envoyproxy/gateway-helm", "v1.6.3", None, "envoy-gateway-system")
CERT_MANAGER = HelmChart("cert-manager", "v1.19.2", "https://charts.jetstack.io", "cert-manager")
KEDA = HelmChart("keda", "2.18.1", "https://kedacore.github.io/charts", "keda")

# Labels GPU nodes carry: AKS's own, GPU feature discovery's and node feature discovery's (NVIDIA PCI id).
GPU_NODE_TERMS = [
    {"matchExpressions": [{"key": "kubernetes.azure.com/accelerator", "operator": "In", "values": ["nvidia"]}]},
    {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]},
    {
        "matchExpressions": [
            {"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}
        ]
    },
]


@dataclass(frozen=True)
class ClusterAddonsArgs:
    provider: k8s.Provider
    config: AddonsConfig
    # Whether any backend runs on a GPU (the device plugin's default).
    uses_gpu: bool
    gpu_taints: Sequence[str]
    labels: dict[str, str]


def device_plugin_values(gpu_taints: Sequence[str]) -> dict[str, object]:
    # The chart's default affinity needs node feature discovery labels, which AKS nodes lack: the
    # plugin would run nowhere. Match any of the GPU labels instead, and tolerate the pools' taints.
    return {
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": GPU_NODE_TERMS}}
        },
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            *tolerations(gpu_taints),
        ],
    }


CERT_MANAGER_VALUES: dict[str, object] = {
    "crds": {"enabled": True, "keep": True},
    # Gateway API support (ACME HTTP-01 through a Gateway); the chart needs apiVersion and kind with it.
    "config": {
        "apiVersion": "controller.config.cert-manager.io/v1alpha1",
        "kind": "ControllerConfiguration",
        "enableGatewayAPI": True,
    },
}


class ClusterAddons(pulumi.ComponentResource):
    # What objects using the add-ons' CRDs must depend on (empty when the cluster brings its own).
    gateway_dependencies: list[pulumi.Resource]
    keda_dependencies: list[pulumi.Resource]
    installed: list[str]

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:ClusterAddons", name, None, opts)
        self._name, self._args = name, args
        config = args.config
        self.installed = []
        self.gateway_dependencies = []
        self.keda_dependencies = []

        device_plugin = config.nvidia_device_plugin if config.nvidia_device_plugin is not None else args.uses_gpu
        if device_plugin:
            self._chart("device-plugin", DEVICE_PLUGIN, device_plugin_values(args.gpu_taints))
        envoy: pulumi.Resource | None = None
        if config.envoy_gateway:
            envoy = self._chart("envoy-gateway", ENVOY_GATEWAY, {})
            self.gateway_dependencies.append(envoy)
        if config.cert_manager:
            # With Gateway API support on, cert-manager needs the Gateway API CRDs before it starts.
            cert_manager = self._chart(
                "cert-manager", CERT_MANAGER, CERT_MANAGER_VALUES, after=[envoy] if envoy else []
            )
            self.gateway_dependencies.append(cert_manager)
        if config.keda:
            self.keda_dependencies.append(self._chart("keda", KEDA, {}))
        self.register_outputs({"installed": self.installed})

    def _chart(
        self, key: str, chart: HelmChart, values: dict[str, object], after: Sequence[pulumi.Resource] = ()
    ) -> k8s.helm.v4.Chart:
        args = self._args
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        namespace = k8s.core.v1.Namespace(
            f"{self._name}-{key}-ns",
            metadata={
                "name": chart.namespace,
                "labels": {
                    **args.labels,
                    "pod-security.kubernetes.io/enforce": chart.pod_security,
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
            opts=child,
        )
        self.installed.append(key)
        return k8s.helm.v4.Chart(
            f"{self._name}-{key}",
            chart=chart.chart,
            version=chart.version,
            repository_opts={"repo": chart.repo} if chart.repo else None,
            namespace=chart.namespace,
            values=values,
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace, *after])),
        )

"""Monitoring on Kubernetes: kube-prometheus-stack (Prometheus, Alertmanager, Grafana) from a pinned
chart, the DCGM exporter on GPU nodes, monitors for the backends and the gateway, the shared rules as
PrometheusRule objects and the shared dashboards as ConfigMaps for Grafana's sidecar.

With `monitoring.install: false` the cluster's own Prometheus operator is assumed: only the monitors,
rules and dashboards are created (its Prometheus must select them; see README)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import yaml

from infra.config import MonitoringConfig
from infra.conventions import JOBS
from infra.k8s.addons import GPU_NODE_TERMS, HelmChart
from infra.k8s.gateway import PROXY_NAMESPACE, PROXY_POD_LABELS
from infra.k8s.pods import JOB_LABEL, tolerations

KUBE_PROMETHEUS_STACK = HelmChart(
    "kube-prometheus-stack", "79.7.1", "https://prometheus-community.github.io/helm-charts", "monitoring", "privileged"
)
DCGM_EXPORTER = HelmChart(
    "dcgm-exporter", "4.6.0", "https://nvidia.github.io/dcgm-exporter/helm-charts", "gpu-monitoring", "privileged"
)
MONITORING_API = "monitoring.coreos.com/v1"
GATEWAY_JOB = JOBS["gateway"]
DCGM_JOB = "slm-dcgm"
# Envoy Gateway's proxy container serves Prometheus stats on this port.
ENVOY_METRICS_PORT = 19001
# cert-manager's chart (v1.19, templates/service.yaml) puts the controller's metrics behind this
# Service port, on the Service it labels as below; the chart's own ServiceMonitor is off by default.
CERT_MANAGER_SELECTOR = {"app.kubernetes.io/name": "cert-manager", "app.kubernetes.io/component": "controller"}
CERT_MANAGER_METRICS_PORT = "tcp-prometheus-servicemonitor"
# Not slm-*: BackendDown (up{job=~"slm-.*"}) is about what serves requests.
CERT_MANAGER_JOB = "cert-manager"
DASHBOARD_LABEL = "grafana_dashboard"
GRAFANA_SECRET = "grafana-admin"  # noqa: S105 (a Secret's name)
RECEIVERS_SECRET = "alertmanager-receivers"  # noqa: S105 (a Secret's name)
# Where the operator mounts `alertmanagerSpec.secrets` in the Alertmanager pod.
RECEIVERS_MOUNT = f"/etc/alertmanager/secrets/{RECEIVERS_SECRET}"


@dataclass(frozen=True)
class MonitoringArgs:
    provider: k8s.Provider
    config: MonitoringConfig
    # Backends with a /metrics endpoint (vLLM, ONNX): their Services carry JOB_LABEL.
    metrics_backends: Sequence[str]
    workload_namespace: pulumi.Input[str]
    # File name -> content (infra/monitoring_files.py): rules incl. generated thresholds, dashboards.
    rule_files: Mapping[str, str]
    dashboards: Mapping[str, str]
    # alertmanager.yml as a document (infra/monitoring_files.alertmanager_document with RECEIVERS_MOUNT).
    alertmanager: dict[str, object]
    uses_gpu: bool
    gpu_taints: Sequence[str]
    labels: dict[str, str]
    # Webhook URLs are credentials (Slack and Teams put the token in the URL): kept secret.
    receiver_urls: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    # The gateway add-on's chart: the PodMonitor lives in its namespace.
    gateway_depends_on: Sequence[pulumi.Resource] = ()
    # Where the stack installs cert-manager (None: it does not); its ServiceMonitor lives there, after
    # the add-on's chart.
    cert_manager_namespace: str | None = None
    cert_manager_depends_on: Sequence[pulumi.Resource] = ()


def stack_values(config: MonitoringConfig, alertmanager: dict[str, object]) -> dict[str, object]:
    """kube-prometheus-stack values: no secret here; Grafana and Alertmanager read theirs from Secrets."""
    return {
        "prometheus": {
            "prometheusSpec": {
                # Select every monitor and rule, not only those labelled with this release.
                "ruleSelectorNilUsesHelmValues": False,
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "retention": "15d",
            }
        },
        # The cost dashboard prices GPU nodes by their VM size label.
        "kube-state-metrics": {"metricLabelsAllowlist": ["nodes=[node.kubernetes.io/instance-type]"]},
        "alertmanager": {
            "config": alertmanager,
            "alertmanagerSpec": {"secrets": [RECEIVERS_SECRET] if config.receivers else []},
        },
        "grafana": {
            "admin": {"existingSecret": GRAFANA_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "sidecar": {
                "dashboards": {"enabled": True, "label": DASHBOARD_LABEL, "labelValue": "1", "searchNamespace": "ALL"}
            },
            "grafana.ini": {
                "analytics": {"reporting_enabled": False, "check_for_updates": False},
                "users": {"allow_sign_up": False},
                "auth.anonymous": {"enabled": False},
            },
        },
    }


def dcgm_values(gpu_taints: Sequence[str]) -> dict[str, object]:
    return {
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            *tolerations(gpu_taints),
        ],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": GPU_NODE_TERMS}}
        },
        "serviceMonitor": {
            "enabled": True,
            "interval": "15s",
            "relabelings": [{"targetLabel": "job", "replacement": DCGM_JOB}],
        },
    }


def rule_name(file_name: str) -> str:
    """`alerts.rules.yml` -> `slm-serving-alerts`."""
    return "slm-serving-" + file_name.split(".", maxsplit=1)[0].replace("_", "-")


class MonitoringStack(pulumi.ComponentResource):
    grafana_password: pulumi.Output[str] | None
    rule_names: list[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:MonitoringStack", name, None, opts)
        config = args.config
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        labels = {**args.labels, "app.kubernetes.io/component": "monitoring"}
        namespace = config.namespace
        crds: list[pulumi.Resource] = []
        self.grafana_password = None

        if config.install:
            ns = k8s.core.v1.Namespace(
                f"{name}-ns",
                metadata={
                    "name": namespace,
                    "labels": {
                        **labels,
                        # The node exporter reads the host's /proc and /sys.
                        "pod-security.kubernetes.io/enforce": KUBE_PROMETHEUS_STACK.pod_security,
                    },
                },
                opts=child,
            )
            password = random.RandomPassword(
                f"{name}-grafana-admin", length=32, special=False, opts=pulumi.ResourceOptions(parent=self)
            )
            self.grafana_password = pulumi.Output.secret(password.result)
            grafana_secret = k8s.core.v1.Secret(
                f"{name}-grafana-admin",
                metadata={"name": GRAFANA_SECRET, "namespace": namespace, "labels": labels},
                type="Opaque",
                string_data={"admin-user": "admin", "admin-password": self.grafana_password},
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[ns])),
            )
            before_chart: list[pulumi.Resource] = [ns, grafana_secret]
            if config.receivers:
                before_chart.append(
                    k8s.core.v1.Secret(
                        f"{name}-alertmanager-receivers",
                        metadata={"name": RECEIVERS_SECRET, "namespace": namespace, "labels": labels},
                        type="Opaque",
                        string_data={r: pulumi.Output.secret(url) for r, url in args.receiver_urls.items()},
                        opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[ns])),
                    )
                )
            chart = k8s.helm.v4.Chart(
                f"{name}-kube-prometheus-stack",
                chart=KUBE_PROMETHEUS_STACK.chart,
                version=KUBE_PROMETHEUS_STACK.version,
                repository_opts={"repo": KUBE_PROMETHEUS_STACK.repo},
                namespace=namespace,
                values=stack_values(config, args.alertmanager),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=before_chart)),
            )
            # The chart carries the operator's CRDs: monitors and rules are created after it.
            crds.append(chart)

        if args.uses_gpu:
            gpu_ns = k8s.core.v1.Namespace(
                f"{name}-dcgm-ns",
                metadata={
                    "name": DCGM_EXPORTER.namespace,
                    # The exporter talks to the GPU driver (SYS_ADMIN, host paths).
                    "labels": {**labels, "pod-security.kubernetes.io/enforce": DCGM_EXPORTER.pod_security},
                },
                opts=child,
            )
            k8s.helm.v4.Chart(
                f"{name}-dcgm-exporter",
                chart=DCGM_EXPORTER.chart,
                version=DCGM_EXPORTER.version,
                repository_opts={"repo": DCGM_EXPORTER.repo},
                namespace=DCGM_EXPORTER.namespace,
                values=dcgm_values(args.gpu_taints),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[gpu_ns, *crds])),
            )

        after_crds = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=crds))

        def monitoring_object(  # noqa: PLR0917 (a manifest's own fields, in their order)
            resource: str,
            kind: str,
            object_name: str,
            object_namespace: pulumi.Input[str],
            spec: object,
            after: Sequence[pulumi.Resource] = (),
        ) -> None:
            k8s.apiextensions.CustomResource(
                f"{name}-{resource}",
                api_version=MONITORING_API,
                kind=kind,
                metadata={"name": object_name, "namespace": object_namespace, "labels": labels},
                spec=spec,
                opts=pulumi.ResourceOptions.merge(after_crds, pulumi.ResourceOptions(depends_on=[*crds, *after])),
            )

        if args.metrics_backends:
            monitoring_object(
                "backends",
                "ServiceMonitor",
                "slm-serving-backends",
                args.workload_namespace,
                {
                    "jobLabel": JOB_LABEL,
                    "selector": {"matchExpressions": [{"key": JOB_LABEL, "operator": "Exists"}]},
                    "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
                },
            )
        monitoring_object(
            "gateway",
            "PodMonitor",
            "slm-serving-gateway",
            PROXY_NAMESPACE,
            {
                "selector": {"matchLabels": PROXY_POD_LABELS},
                "podMetricsEndpoints": [
                    {
                        "port": "metrics",
                        "path": "/stats/prometheus",
                        "interval": "15s",
                        "relabelings": [{"targetLabel": "job", "replacement": GATEWAY_JOB}],
                    }
                ],
            },
            after=args.gateway_depends_on,
        )
        if args.cert_manager_namespace is not None:
            # CertificateExpiringSoon reads the controller's certmanager_certificate_* series.
            monitoring_object(
                "cert-manager",
                "ServiceMonitor",
                "slm-serving-cert-manager",
                args.cert_manager_namespace,
                {
                    "selector": {"matchLabels": CERT_MANAGER_SELECTOR},
                    "endpoints": [
                        {
                            "port": CERT_MANAGER_METRICS_PORT,
                            "path": "/metrics",
                            "interval": "60s",
                            "relabelings": [{"targetLabel": "job", "replacement": CERT_MANAGER_JOB}],
                        }
                    ],
                },
                after=args.cert_manager_depends_on,
            )
        self.rule_names = []
        for file_name, content in sorted(args.rule_files.items()):
            rule = rule_name(file_name)
            monitoring_object(f"rules-{rule}", "PrometheusRule", rule, args.workload_namespace, yaml.safe_load(content))
            self.rule_names.append(rule)
        for file_name, content in sorted(args.dashboards.items()):
            stem = file_name.removesuffix(".json")
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{stem}",
                metadata={
                    "name": f"slm-serving-dashboard-{stem}",
                    "namespace": namespace,
                    "labels": {**labels, DASHBOARD_LABEL: "1"},
                },
                data={file_name: content},
                opts=after_crds,
            )
        self.register_outputs({"rules": self.rule_names})

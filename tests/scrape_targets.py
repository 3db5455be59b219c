"""Scrape targets, as tables: which component exports each series the rules and dashboards read, and
what the components a chart or controller creates at run time look like (the stand-ins the scrape
coverage check matches monitors against, tests/test_scrape_coverage.py).

There is no helm binary and no cluster here: each stand-in replaces the objects a pinned chart or
controller really creates, with the labels and port names read from that version's source (named on
each entry). Our own objects (backend Deployments and Services, our monitors) are read from the
rendered stack instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- Components ----------------------------------------------------------------------------------
BACKEND_METRICS = "backends with /metrics (vLLM, ONNX server)"
ONNX_SERVER = "ONNX server"
ENVOY = "Envoy Gateway proxies"
CADDY = "Caddy (the VM's proxy)"
CERT_MANAGER = "cert-manager controller"
KUBE_STATE_METRICS = "kube-state-metrics"
NODE_EXPORTER = "node exporter"
DCGM = "DCGM exporter"
PROMETHEUS = "Prometheus itself (every scrape target)"
GPU_PRICES = "GPU prices (monitoring.gpuHourlyUsd)"  # not scraped: rendered from the config

# --- Which component exports a series: metric name prefix -> component (first match wins) --------
# Series recorded by our rules (slm:*) are not here: they are covered when their rule's inputs are.
SERIES_SOURCES: tuple[tuple[str, str], ...] = (
    ("vllm:", BACKEND_METRICS),  # vLLM and the ONNX server export the same names (README: metrics)
    ("onnx_server_", ONNX_SERVER),
    ("envoy_", ENVOY),
    ("caddy_", CADDY),
    ("certmanager_", CERT_MANAGER),
    ("kube_", KUBE_STATE_METRICS),
    ("node_", NODE_EXPORTER),
    ("DCGM_", DCGM),
    ("slm:gpu_hourly_usd", GPU_PRICES),  # recorded only for the prices the config sets
)
# Exact names Prometheus writes for every target it scrapes.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def source_of(metric: str) -> str | None:
    if metric in PROMETHEUS_SERIES:
        return PROMETHEUS
    return next((component for prefix, component in SERIES_SOURCES if metric.startswith(prefix)), None)


# --- Kubernetes: objects charts and controllers create ------------------------------------------
@dataclass(frozen=True)
class Monitor:
    """A ServiceMonitor (port: a Service port's name) or PodMonitor (port: a container port's name)."""

    kind: str
    name: str
    match_labels: dict[str, str]
    port: str
    job_label: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the monitor's own labels
    match_expressions: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True)
class StandIn:
    """What a chart or controller creates for one component: its pods' labels and named container
    ports, the Service in front of them (port name -> target port), and the monitor the chart itself
    renders when our values enable it. Labels that name the Helm release use RELEASE."""

    component: str
    source: str
    pod_labels: dict[str, str]
    container_ports: dict[str, int]
    service_labels: dict[str, str] = field(default_factory=dict)
    service_selector: dict[str, str] = field(default_factory=dict)
    service_ports: dict[str, int | str] = field(default_factory=dict)
    chart_monitor: Monitor | None = None


RELEASE = "<release>"

# The chart whose objects each stand-in replaces (the recorded Chart resource's `chart` input).
STAND_INS: dict[str, StandIn] = {
    # Envoy Gateway creates one Deployment per Gateway in its own namespace; its pods as the
    # controller labels them (envoyproxy/gateway internal/infrastructure/kubernetes/proxy,
    # testdata/deployments/default.yaml; the same labels and ports through v1.6): the `envoy`
    # container serves /stats/prometheus on the port named `metrics`. OWNER is the Gateway's name.
    "oci://docker.io/envoyproxy/gateway-helm": StandIn(
        component=ENVOY,
        source="Envoy Gateway v1.6 proxy Deployment (proxy/testdata/deployments/default.yaml)",
        pod_labels={
            "app.kubernetes.io/name": "envoy",
            "app.kubernetes.io/component": "proxy",
            "app.kubernetes.io/managed-by": "envoy-gateway",
            "gateway.envoyproxy.io/owning-gateway-name": "<gateway>",
            "gateway.envoyproxy.io/owning-gateway-namespace": "<gateway-namespace>",
        },
        container_ports={"metrics": 19001, "readiness": 19003},
    ),
    # cert-manager's chart (cert-manager/cert-manager deploy/charts/cert-manager): templates/service.yaml
    # (created with prometheus.enabled, the default) puts the controller's metrics behind Service port
    # `tcp-prometheus-servicemonitor` (9402), targetPort prometheus.servicemonitor.targetPort (9402),
    # selecting name/instance/component; templates/deployment.yaml exposes the controller's 9402 as
    # `http-metrics` (unnamed in old releases: the numeric targetPort reaches it either way). The
    # chart's own ServiceMonitor is off by default; ours (infra/k8s/monitoring.py) is used.
    "cert-manager": StandIn(
        component=CERT_MANAGER,
        source="cert-manager chart v1.19.2 templates/service.yaml, templates/deployment.yaml",
        pod_labels={
            "app": "cert-manager",
            "app.kubernetes.io/name": "cert-manager",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "controller",
        },
        container_ports={"http-metrics": 9402, "http-healthz": 9403},
        service_labels={
            "app": "cert-manager",
            "app.kubernetes.io/name": "cert-manager",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "controller",
        },
        service_selector={
            "app.kubernetes.io/name": "cert-manager",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "controller",
        },
        service_ports={"tcp-prometheus-servicemonitor": 9402},
    ),
    # kube-prometheus-stack 79.7.1 ships kube-state-metrics as a subchart and turns its ServiceMonitor
    # on (values kube-state-metrics.prometheus.monitor.enabled): charts/kube-state-metrics
    # templates/service.yaml (port `http`, targetPort `http`), deployment.yaml (container port `http`,
    # 8080), servicemonitor.yaml (selects the selector labels, endpoint port `http`).
    "kube-prometheus-stack": StandIn(
        component=KUBE_STATE_METRICS,
        source="kube-state-metrics subchart of kube-prometheus-stack 79.7.1 (service, deployment, servicemonitor)",
        pod_labels={"app.kubernetes.io/name": "kube-state-metrics", "app.kubernetes.io/instance": RELEASE},
        container_ports={"http": 8080},
        service_labels={"app.kubernetes.io/name": "kube-state-metrics", "app.kubernetes.io/instance": RELEASE},
        service_selector={"app.kubernetes.io/name": "kube-state-metrics", "app.kubernetes.io/instance": RELEASE},
        service_ports={"http": "http"},
        chart_monitor=Monitor(
            kind="ServiceMonitor",
            name="kube-state-metrics",
            match_labels={"app.kubernetes.io/name": "kube-state-metrics", "app.kubernetes.io/instance": RELEASE},
            port="http",
            job_label="app.kubernetes.io/name",
            # kube-prometheus-stack labels its subcharts' monitors with its release (releaseLabel).
            labels={"release": RELEASE},
        ),
    ),
    # NVIDIA's dcgm-exporter chart 4.6.0 (deployment/templates): service.yaml (port `metrics`, 9400,
    # targetPort 9400), daemonset.yaml (container port `metrics`, 9400), service-monitor.yaml (when
    # serviceMonitor.enabled: selects the selector labels, endpoint port `metrics`).
    "dcgm-exporter": StandIn(
        component=DCGM,
        source="dcgm-exporter chart 4.6.0 templates/service.yaml, daemonset.yaml, service-monitor.yaml",
        pod_labels={"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/instance": RELEASE},
        container_ports={"metrics": 9400},
        service_labels={
            "app.kubernetes.io/name": "dcgm-exporter",
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/component": "dcgm-exporter",
        },
        service_selector={"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/instance": RELEASE},
        service_ports={"metrics": 9400},
        chart_monitor=Monitor(
            kind="ServiceMonitor",
            name="dcgm-exporter",
            match_labels={"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/instance": RELEASE},
            port="metrics",
            # The chart's own labels; no `release` of kube-prometheus-stack's.
            labels={"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/instance": RELEASE},
        ),
    ),
}

# kube-prometheus-stack 79.7.1 values.yaml: the Prometheus it installs selects monitors carrying
# `release: <release>` unless <kind>SelectorNilUsesHelmValues is false (then every monitor), in every
# namespace (serviceMonitorNamespaceSelector / podMonitorNamespaceSelector default {}).
# (The operator reads a nil namespace selector as "Prometheus's own namespace only"; the chart's {} is
# every namespace.)
KUBE_PROMETHEUS_STACK_SELECTORS = {
    "ServiceMonitor": (
        "serviceMonitorSelectorNilUsesHelmValues",
        "serviceMonitorSelector",
        "serviceMonitorNamespaceSelector",
    ),
    "PodMonitor": ("podMonitorSelectorNilUsesHelmValues", "podMonitorSelector", "podMonitorNamespaceSelector"),
}

# --- The VM: what each Compose service listens on when its command does not say ------------------
# Image -> (port, where the default comes from). Backends and the proxy are read from their rendered
# command and Caddyfile instead.
IMAGE_DEFAULT_PORTS: dict[str, tuple[str, int, str]] = {
    "prom/node-exporter": (NODE_EXPORTER, 9100, "node_exporter --web.listen-address default ':9100'"),
    "nvcr.io/nvidia/k8s/dcgm-exporter": (DCGM, 9400, "dcgm-exporter --address default ':9400'"),
}

# --- Dashboard panels that show no data on a stack by design (the component does not run there) --
# Stack -> components. Every other panel's series must be scraped; every loaded rule's, always.
# No committed stack configures GPU prices: the cost dashboard's spend panels are empty everywhere.
EMPTY_BY_DESIGN: dict[str, frozenset[str]] = {
    "prod": frozenset({GPU_PRICES}),
    "local": frozenset({DCGM, GPU_PRICES}),  # CPU backends only: the GPU and cost dashboards stay empty
    "dev": frozenset({KUBE_STATE_METRICS, GPU_PRICES}),  # the overview's replica panel is Kubernetes'
}

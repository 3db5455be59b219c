"""What may talk to what: the flow tables the connectivity tests check, and the stand-ins for what
controllers create at run time. Plain data; tests/test_connectivity.py (Kubernetes, through np-guard's
network-config-analyzer) and tests/test_vm_network.py (the VM's NSG and published ports) read it.

A peer is one of:
- a workload the stack renders, found by kind and pod-template labels (`Rendered`);
- a stand-in pod for what a controller creates at run time, labelled as that controller labels it,
  with the version its labels were read from (`StandIn`);
- an address outside the cluster (`Address`).
A row applies to a stack when both its peers exist there (and its condition holds); every row
applies to at least one checked stack, so none is dead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.conventions import BACKEND_PORT
from infra.k8s.gateway import GATEWAY_NAME, PROXY_NAMESPACE
from infra.k8s.namespaces import WORKLOAD_NAMESPACE


@dataclass(frozen=True)
class Rendered:
    kind: str
    labels: dict[str, str]


@dataclass(frozen=True)
class StandIn:
    namespace: str
    name: str
    labels: dict[str, str]
    ports: tuple[tuple[str, int, str], ...]  # (name, containerPort, protocol)
    source: str  # where its labels and ports come from
    # Only where the stack makes the controller create it (e.g. "domain": ACME solvers).
    when: str | None = None


@dataclass(frozen=True)
class Address:
    ip: str
    about: str


Peer = Rendered | StandIn | Address

# Envoy Gateway runs Envoy unprivileged: a listener on a port below 1024 listens on the port + 10000
# in the pod (Envoy Gateway v1.6, internal/gatewayapi servicePortToContainerPort), and NetworkPolicies
# see the pod's port.
ENVOY_HTTPS = 443 + 10000
ENVOY_HTTP = 80 + 10000
ENVOY_METRICS = 19001  # Envoy Gateway v1.6 bootstrap EnvoyStatsPort, container port "metrics"
ACME_SOLVER_PORT = 8089  # cert-manager v1.19 acmesolver --listen-port, container port "http"
PROMETHEUS_PORT = 9090
GRAFANA_PORT = 3000
KEDA_METRICS_PORT = 8080
CERT_MANAGER_METRICS = 9402
DCGM_PORT = 9400
WEB_UI_PORT = 8080

PEERS: dict[str, Peer] = {
    # Rendered workloads (slm-serving namespace).
    "vllm": Rendered("Deployment", {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/component": "backend"}),
    "ollama": Rendered("Deployment", {"app.kubernetes.io/name": "ollama", "app.kubernetes.io/component": "backend"}),
    "onnx": Rendered("Deployment", {"app.kubernetes.io/name": "onnx", "app.kubernetes.io/component": "backend"}),
    "ollama-pull": Rendered("Job", {"app.kubernetes.io/name": "ollama", "app.kubernetes.io/component": "model-pull"}),
    "onnx-convert": Rendered(
        "Job", {"app.kubernetes.io/name": "onnx", "app.kubernetes.io/component": "model-conversion"}
    ),
    "open-webui": Rendered(
        "Deployment", {"app.kubernetes.io/name": "open-webui", "app.kubernetes.io/component": "web-ui"}
    ),
    # Stand-ins for what controllers create.
    "gateway": StandIn(
        PROXY_NAMESPACE,
        "envoy-slm-serving",
        {
            "app.kubernetes.io/name": "envoy",
            "app.kubernetes.io/component": "proxy",
            "app.kubernetes.io/managed-by": "envoy-gateway",
            "gateway.envoyproxy.io/owning-gateway-name": GATEWAY_NAME,
            "gateway.envoyproxy.io/owning-gateway-namespace": WORKLOAD_NAMESPACE,
        },
        (("https", ENVOY_HTTPS, "TCP"), ("http", ENVOY_HTTP, "TCP"), ("metrics", ENVOY_METRICS, "TCP")),
        "Envoy Gateway v1.6 internal/infrastructure/kubernetes/proxy: EnvoyAppLabel plus the owning-gateway "
        "labels; proxies run in the controller's namespace",
    ),
    "acme-solver": StandIn(
        WORKLOAD_NAMESPACE,
        "cm-acme-http-solver",
        {
            "acme.cert-manager.io/http01-solver": "true",
            "acme.cert-manager.io/http-domain": "1234567890",
            "acme.cert-manager.io/http-token": "987654321",
        },
        (("http", ACME_SOLVER_PORT, "TCP"),),
        "cert-manager v1.19 pkg/issuer/acme/http/pod.go and pkg/apis/acme/v1 (SolverIdentificationLabelKey): "
        "created in the Challenge's (the Certificate's) namespace. Present in every stack: without a domain "
        "cert-manager creates none, and a pod carrying its labels must then get nothing",
    ),
    "cert-manager": StandIn(
        "cert-manager",
        "cert-manager",
        {"app.kubernetes.io/name": "cert-manager", "app.kubernetes.io/component": "controller"},
        (("http-metrics", CERT_MANAGER_METRICS, "TCP"),),
        "cert-manager chart v1.19.2 templates/deployment.yaml (controller, http-metrics port)",
    ),
    "prometheus": StandIn(
        "monitoring",
        "prometheus-kube-prometheus-stack-prometheus-0",
        {
            "app.kubernetes.io/name": "prometheus",
            "app.kubernetes.io/managed-by": "prometheus-operator",
            "app.kubernetes.io/instance": "kube-prometheus-stack-prometheus",
            "operator.prometheus.io/name": "kube-prometheus-stack-prometheus",
            "operator.prometheus.io/shard": "0",
        },
        (("web", PROMETHEUS_PORT, "TCP"),),
        "prometheus-operator (kube-prometheus-stack 79.7.1): Prometheus podMetadata reserved labels, port web",
    ),
    "grafana": StandIn(
        "monitoring",
        "grafana",
        {"app.kubernetes.io/name": "grafana", "app.kubernetes.io/instance": "kube-prometheus-stack"},
        (("grafana", GRAFANA_PORT, "TCP"),),
        "grafana chart (kube-prometheus-stack 79.7.1 subchart): selector labels, port grafana",
    ),
    "keda": StandIn(
        "keda",
        "keda-operator",
        {
            "app": "keda-operator",
            "name": "keda-operator",
            "app.kubernetes.io/name": "keda-operator",
            "app.kubernetes.io/component": "operator",
            "app.kubernetes.io/part-of": "keda-operator",
        },
        (("http", KEDA_METRICS_PORT, "TCP"),),
        "KEDA chart 2.18 templates/manager/deployment.yaml (pod template labels)",
    ),
    "dcgm-exporter": StandIn(
        "gpu-monitoring",
        "dcgm-exporter",
        {"app.kubernetes.io/name": "dcgm-exporter"},
        (("metrics", DCGM_PORT, "TCP"),),
        "dcgm-exporter chart 4.6.0 (metrics port 9400)",
        when="gpu",
    ),
    "kube-dns": StandIn(
        "kube-system",
        "coredns",
        {"k8s-app": "kube-dns"},
        (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")),
        "CoreDNS as AKS and kind run it (label k8s-app=kube-dns, the Service's selector)",
    ),
    # Addresses.
    "internet": Address("203.0.113.10", "a public address (TEST-NET-3): clients, the hub, the ACME CA"),
    "kubernetes-api": Address("", "the API server as pods reach it: the first address of the service range"),
    "metadata": Address("169.254.169.254", "the cloud's instance metadata endpoint"),
    "node": Address("10.224.0.4", "a node in the AKS subnet (kubelet 10250)"),
}

# The API server's in-cluster address per target: AKS takes it from network.serviceCidr (default
# 10.41.0.0/16, infra/config/cloud.py); kind's default service subnet is 10.96.0.0/16.
KUBERNETES_API = {"aks": "10.41.0.1", "cluster": "10.96.0.1"}

BACKENDS = ("vllm", "ollama", "onnx")
DOWNLOADERS = ("vllm", "ollama-pull", "onnx-convert")  # pods that fetch model files from the internet
OURS = (*BACKENDS, "ollama-pull", "onnx-convert", "open-webui")

Protocol = Literal["TCP", "UDP"]


@dataclass(frozen=True)
class Flow:
    source: str
    destination: str
    port: int
    protocol: Protocol = "TCP"
    why: str = ""
    # "domain" / "no-domain": only with / without gateway.domain; None: wherever both peers exist.
    when: str | None = None


MUST_ALLOW: list[Flow] = [
    Flow("internet", "gateway", ENVOY_HTTPS, why="clients reach the gateway's HTTPS listener"),
    Flow("internet", "gateway", ENVOY_HTTP, why="ACME HTTP-01 and the redirect to HTTPS", when="domain"),
    *(Flow("gateway", b, BACKEND_PORT, why="the gateway's route to each backend") for b in BACKENDS),
    Flow("gateway", "open-webui", WEB_UI_PORT, why="the UI's route"),
    *(Flow("open-webui", b, BACKEND_PORT, why="Open WebUI calls the backends") for b in BACKENDS),
    Flow(
        "gateway", "acme-solver", ACME_SOLVER_PORT, why="the CA's HTTP-01 request, routed to the solver", when="domain"
    ),
    Flow("prometheus", "vllm", BACKEND_PORT, why="scrape /metrics"),
    Flow("prometheus", "onnx", BACKEND_PORT, why="scrape /metrics"),
    Flow("prometheus", "gateway", ENVOY_METRICS, why="scrape Envoy's /stats/prometheus (PodMonitor)"),
    Flow("prometheus", "cert-manager", CERT_MANAGER_METRICS, why="scrape cert-manager (certificate expiry)"),
    Flow("prometheus", "dcgm-exporter", DCGM_PORT, why="scrape GPU metrics"),
    Flow("keda", "prometheus", PROMETHEUS_PORT, why="KEDA reads queue depth from Prometheus"),
    Flow("grafana", "prometheus", PROMETHEUS_PORT, why="dashboards query Prometheus"),
    *(Flow(d, "internet", 443, why="model download over HTTPS") for d in DOWNLOADERS),
    *(Flow(p, "kube-dns", 53, "UDP", why="DNS") for p in (*OURS, "acme-solver")),
    *(Flow(p, "kube-dns", 53, "TCP", why="DNS over TCP (large answers)") for p in (*OURS, "acme-solver")),
]

MUST_DENY: list[Flow] = [
    *(Flow(a, b, BACKEND_PORT, why="a backend never calls another") for a in BACKENDS for b in BACKENDS if a != b),
    *(Flow("internet", b, BACKEND_PORT, why="backends only through the gateway") for b in BACKENDS),
    *(
        Flow(j, b, BACKEND_PORT, why="model jobs call no backend")
        for j in ("ollama-pull", "onnx-convert")
        for b in BACKENDS
    ),
    Flow("open-webui", "internet", 443, why="Open WebUI talks only to the backends"),
    Flow("open-webui", "prometheus", PROMETHEUS_PORT, why="Open WebUI talks only to the backends"),
    Flow("open-webui", "gateway", ENVOY_HTTPS, why="it calls the backends directly, not back through the gateway"),
    *(Flow(b, "internet", 443, why="serves only; its model comes from its job") for b in ("ollama", "onnx")),
    *(
        Flow(p, "kubernetes-api", 443, why="no workload of ours talks to the API server")
        for p in (*OURS, "acme-solver")
    ),
    *(Flow(p, "metadata", 80, why="no instance credentials for workloads") for p in OURS),
    *(Flow(p, "node", 10250, why="no kubelet access") for p in OURS),
    # The monitoring namespace holds more than Prometheus (Grafana and its plugins, Alertmanager):
    # only Prometheus scrapes, and only what has metrics (Ollama has no /metrics and no API keys).
    *(Flow("grafana", b, BACKEND_PORT, why="Grafana reads Prometheus, never a backend") for b in BACKENDS),
    Flow("prometheus", "ollama", BACKEND_PORT, why="Ollama has no /metrics; its API has no key check"),
    Flow("internet", "acme-solver", ACME_SOLVER_PORT, why="the solver is reached only through the gateway"),
    Flow("gateway", "acme-solver", ACME_SOLVER_PORT, why="no domain, no ACME: nothing opens", when="no-domain"),
    Flow("acme-solver", "internet", 443, why="the solver only answers"),
    Flow("gateway", "onnx-convert", BACKEND_PORT, why="jobs serve nothing"),
]


# --- The VM: the NSG in front of it, then the ports the Compose project publishes ---------------

# Who connects to the VM: the operator's networks (allowedCidrs) or anyone else on the internet.
VM_SOURCES = {
    "operator": "the first address of the stack's first allowedCidrs entry",
    "internet": "192.0.2.10 (TEST-NET-1: outside every committed allowedCidrs)",
}
VM_INTERNET = "192.0.2.10"
# What listens on the VM itself, outside Compose (the image's sshd).
VM_HOST_PORTS = {22: "sshd"}


@dataclass(frozen=True)
class VmFlow:
    source: str  # a VM_SOURCES key
    port: int  # the VM's (host) port
    why: str
    when: str | None = None  # "domain" / "no-domain"


VM_MUST_ALLOW: list[VmFlow] = [
    VmFlow("operator", 443, "clients call the API through Caddy"),
    VmFlow("operator", 22, "ssh for the operator"),
    VmFlow("internet", 80, "ACME HTTP-01 from the CA's validation servers, and the redirect to HTTPS", "domain"),
]

VM_MUST_DENY: list[VmFlow] = [
    VmFlow("internet", 443, "the API only for allowedCidrs"),
    VmFlow("internet", 22, "ssh only for allowedCidrs"),
    VmFlow("internet", 80, "no domain: nothing to validate, port 80 stays closed", "no-domain"),
    VmFlow("operator", 80, "no domain: nothing to validate, port 80 stays closed", "no-domain"),
    # Backends, Open WebUI, monitoring and Caddy's internal servers are on the Compose network or
    # loopback only, whoever asks.
    *(
        VmFlow(source, port, "internal only")
        for source in ("operator", "internet")
        for port in (8000, 8080, 8081, 8082, 8443, 9090, 9093, 9100, 9180, 9101, 3000, 11434)
    ),
]

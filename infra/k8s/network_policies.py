"""NetworkPolicies for the workload namespace: deny everything, then admit only the gateway to the
backends, Prometheus to the metrics port of the backends that have metrics, every pod to cluster
DNS, model downloads (HTTPS to the internet, never to private ranges or the instance metadata
endpoint) for the pods that need them, and, with a domain, the gateway to cert-manager's ACME
HTTP-01 solver pods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.conventions import BACKEND_PORT
from infra.k8s.pods import DOWNLOADS_LABEL, SERVING_LABEL

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAME_LABEL = "app.kubernetes.io/name"
# The Prometheus operator sets this on every Prometheus pod and lets nothing override it (Prometheus
# CRD, podMetadata): the monitoring namespace also runs Grafana and Alertmanager, which scrape nothing.
PROMETHEUS_POD_LABELS = {NAME_LABEL: "prometheus"}
# cert-manager (v1.19) labels every HTTP-01 solver pod it creates in the Certificate's namespace with
# this, and the solver listens on 8089 (pkg/issuer/acme/http/pod.go).
ACME_SOLVER_LABELS = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"]


@dataclass(frozen=True)
class WorkloadNetworkPoliciesArgs:
    provider: k8s.Provider
    namespace: pulumi.Input[str]
    labels: dict[str, str]
    gateway_namespace: str
    gateway_pod_labels: dict[str, str]
    monitoring_namespace: str
    # The backends Prometheus scrapes (their pods' app.kubernetes.io/name); Ollama has no /metrics.
    metrics_backends: Sequence[str] = ()
    # Open WebUI's pod labels when it runs (it calls the backends and is reached through the gateway).
    web_ui_labels: dict[str, str] | None = None
    web_ui_port: int = 8080
    # A domain is set: ACME's HTTP-01 request reaches the solver pods through the gateway.
    acme_solver: bool = False


def _from_namespace(
    namespace: str, pod_labels: dict[str, str] | None = None
) -> k8s.networking.v1.NetworkPolicyPeerArgsDict:
    peer: k8s.networking.v1.NetworkPolicyPeerArgsDict = {
        "namespace_selector": {"match_labels": {NAMESPACE_NAME_LABEL: namespace}}
    }
    if pod_labels:
        peer["pod_selector"] = {"match_labels": pod_labels}
    return peer


def _tcp(port: int) -> k8s.networking.v1.NetworkPolicyPortArgsDict:
    return {"protocol": "TCP", "port": port}


def policy_specs(args: WorkloadNetworkPoliciesArgs) -> dict[str, k8s.networking.v1.NetworkPolicySpecArgsDict]:
    serving: k8s.meta.v1.LabelSelectorArgsDict = {"match_labels": {SERVING_LABEL: "true"}}
    gateway = _from_namespace(args.gateway_namespace, args.gateway_pod_labels)
    backend_clients: list[k8s.networking.v1.NetworkPolicyPeerArgsDict] = [gateway]
    specs: dict[str, k8s.networking.v1.NetworkPolicySpecArgsDict] = {
        "default-deny": {"pod_selector": {}, "policy_types": ["Ingress", "Egress"]},
        "allow-dns": {
            "pod_selector": {},
            "policy_types": ["Egress"],
            "egress": [
                {
                    "to": [_from_namespace("kube-system", {"k8s-app": "kube-dns"})],
                    "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)],
                }
            ],
        },
        "allow-model-download": {
            "pod_selector": {"match_labels": {DOWNLOADS_LABEL: "true"}},
            "policy_types": ["Egress"],
            "egress": [{"to": [{"ip_block": {"cidr": "0.0.0.0/0", "except_": PRIVATE_RANGES}}], "ports": [_tcp(443)]}],
        },
    }
    if args.metrics_backends:
        prometheus = _from_namespace(args.monitoring_namespace, PROMETHEUS_POD_LABELS)
        specs["allow-metrics-scrape"] = {
            "pod_selector": {
                "match_labels": {SERVING_LABEL: "true"},
                "match_expressions": [{"key": NAME_LABEL, "operator": "In", "values": list(args.metrics_backends)}],
            },
            "policy_types": ["Ingress"],
            "ingress": [{"from_": [prometheus], "ports": [_tcp(BACKEND_PORT)]}],
        }
    if args.web_ui_labels is not None:
        ui: k8s.meta.v1.LabelSelectorArgsDict = {"match_labels": args.web_ui_labels}
        backend_clients.append({"pod_selector": ui})
        specs["allow-gateway-to-web-ui"] = {
            "pod_selector": ui,
            "policy_types": ["Ingress"],
            "ingress": [{"from_": [gateway], "ports": [_tcp(args.web_ui_port)]}],
        }
        specs["allow-web-ui-to-backends"] = {
            "pod_selector": ui,
            "policy_types": ["Egress"],
            "egress": [{"to": [{"pod_selector": serving}], "ports": [_tcp(BACKEND_PORT)]}],
        }
    if args.acme_solver:
        # Without it the default deny drops the CA's request and the certificate is never issued.
        specs["allow-gateway-to-acme-solver"] = {
            "pod_selector": {"match_labels": ACME_SOLVER_LABELS},
            "policy_types": ["Ingress"],
            "ingress": [{"from_": [gateway], "ports": [_tcp(ACME_SOLVER_PORT)]}],
        }
    specs["allow-clients-to-backends"] = {
        "pod_selector": serving,
        "policy_types": ["Ingress"],
        "ingress": [{"from_": backend_clients, "ports": [_tcp(BACKEND_PORT)]}],
    }
    return specs


class WorkloadNetworkPolicies(pulumi.ComponentResource):
    names: list[str]

    def __init__(
        self, name: str, args: WorkloadNetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("slm:k8s:WorkloadNetworkPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args.provider)
        labels = {**args.labels, "app.kubernetes.io/component": "network-policy"}
        self.names = []
        for policy, spec in policy_specs(args).items():
            k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy}",
                metadata={"name": policy, "namespace": args.namespace, "labels": labels},
                spec=spec,
                opts=child,
            )
            self.names.append(policy)
        self.register_outputs({"names": self.names})

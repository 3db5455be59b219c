"""What every backend shares on Kubernetes: its Deployment (restricted pod, probes sized by the
startup budget, GPU placement), its Service, a PodDisruptionBudget and, with KEDA, a ScaledObject on
queue depth. Each backend component decides only its container and volumes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from infra.config import BackendConfig
from infra.endpoints import BACKEND_PORT
from infra.k8s.pods import (
    DOWNLOADS_LABEL,
    JOB_LABEL,
    SERVING_LABEL,
    WORKLOAD_UID,
    restricted_container,
    restricted_pod,
    scanner_annotations,
    tolerations,
)

GPU_RESOURCE = "nvidia.com/gpu"
# KEDA asks Prometheus every this many seconds.
POLLING_SECONDS = 15


@dataclass(frozen=True)
class BackendPlatform:
    """The cluster facts a backend needs, handed down from the program."""

    provider: k8s.Provider
    namespace: pulumi.Input[str]
    labels: dict[str, str]
    gpu_taints: tuple[str, ...] = ()
    # Labels every GPU node has (the pools' common labels); empty: placement by taint and GPU request only.
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    access_mode: str = "ReadWriteMany"
    # Queue-depth autoscaling through KEDA's Prometheus scaler; None: fixed replicas.
    prometheus_url: str | None = None
    # KEDA's chart when the stack installs it: ScaledObjects need its CRDs.
    scaler_depends_on: Sequence[pulumi.Resource] = ()


@dataclass(frozen=True)
class Probes:
    """HTTP paths on the backend port (no API key needed on any of them)."""

    startup: str
    readiness: str
    liveness: str


def gateway_cluster(namespace: str, backend: str) -> str:
    """The Envoy cluster regex Envoy Gateway names after a route: httproute/<ns>/<route>/rule/<n>."""
    return f"httproute/{namespace}/{backend}/.*"


def demand_query(namespace: str, backend: str, in_backend: str | None) -> str:
    """PromQL for the load KEDA scales a backend on.

    `in_backend` is what the backend itself reports (requests waiting); at zero replicas nothing
    reports it, so the gateway's requests that found no healthy upstream count as demand too."""
    cluster = gateway_cluster(namespace, backend)
    at_gateway = f'sum(rate(envoy_cluster_upstream_cx_none_healthy{{envoy_cluster_name=~"{cluster}"}}[2m]))'
    if in_backend is None:
        # No queue metric (Ollama): requests in flight through the gateway.
        in_backend = f'sum(envoy_cluster_upstream_rq_active{{envoy_cluster_name=~"{cluster}"}})'
    return f"({in_backend} or vector(0)) + ({at_gateway} or vector(0))"


def labels_for(platform: BackendPlatform, backend: str, component: str = "backend") -> dict[str, str]:
    return {
        **platform.labels,
        "app.kubernetes.io/name": backend,
        "app.kubernetes.io/component": component,
    }


def http_probe(path: str, period: int, failures: int, timeout: int = 5) -> k8s.core.v1.ProbeArgsDict:
    return {
        "http_get": {"path": path, "port": "http"},
        "period_seconds": period,
        "failure_threshold": failures,
        "timeout_seconds": timeout,
    }


def _resources(config: BackendConfig) -> k8s.core.v1.ResourceRequirementsArgsDict:
    requests = {"cpu": config.resources.cpu, "memory": config.resources.memory}
    # A CPU limit equal to the request: the servers size their thread pools from the CPU quota.
    limits = {"cpu": config.resources.cpu, "memory": config.resources.memory}
    if config.device == "gpu":
        # Extended resources: request and limit must match; one whole GPU per replica.
        requests[GPU_RESOURCE] = "1"
        limits[GPU_RESOURCE] = "1"
    return {"requests": requests, "limits": limits}


def _strategy(config: BackendConfig) -> k8s.apps.v1.DeploymentStrategyArgsDict:
    if config.device == "gpu":
        # Never a surge pod: a rollout must not need a second GPU (replace one replica at a time).
        return {"type": "RollingUpdate", "rolling_update": {"max_surge": 0, "max_unavailable": 1}}
    return {"type": "RollingUpdate", "rolling_update": {"max_surge": 1, "max_unavailable": 0}}


@dataclass(frozen=True)
class Workload:
    """One backend's pod, as its component describes it."""

    backend: str
    config: BackendConfig
    container: k8s.core.v1.ContainerArgsDict
    volumes: Sequence[k8s.core.v1.VolumeArgsDict]
    probes: Probes
    init_containers: Sequence[k8s.core.v1.ContainerArgsDict] = ()
    # PromQL for requests waiting across the backend's replicas; None: not autoscaled on queue.
    queue_query: str | None = None
    downloads_models: bool = False
    # Serves Prometheus metrics at /metrics on the backend port (vLLM, ONNX; Ollama has none).
    metrics: bool = False


class ServingObjects:
    """The Deployment, Service, PodDisruptionBudget and ScaledObject of one backend."""

    def __init__(self, name: str, workload: Workload, platform: BackendPlatform, parent: pulumi.Resource) -> None:
        child = pulumi.ResourceOptions(parent=parent, provider=platform.provider)
        config = workload.config
        labels = labels_for(platform, workload.backend)
        selector = {"app.kubernetes.io/name": workload.backend, "app.kubernetes.io/component": "backend"}
        pod_labels = {**labels, SERVING_LABEL: "true"}
        if workload.downloads_models:
            pod_labels[DOWNLOADS_LABEL] = "true"
        startup_failures = max(1, config.startup_minutes * 60 // 10)
        container: k8s.core.v1.ContainerArgsDict = {
            **workload.container,
            "name": workload.backend,
            "ports": [{"name": "http", "container_port": BACKEND_PORT, "protocol": "TCP"}],
            "resources": _resources(config),
            "security_context": restricted_container(),
            "startup_probe": http_probe(workload.probes.startup, period=10, failures=startup_failures),
            "readiness_probe": http_probe(workload.probes.readiness, period=10, failures=3),
            "liveness_probe": http_probe(workload.probes.liveness, period=20, failures=3),
        }
        pod_spec: k8s.core.v1.PodSpecArgsDict = {
            "automount_service_account_token": False,
            "enable_service_links": False,
            "security_context": restricted_pod(WORKLOAD_UID),
            "termination_grace_period_seconds": 60,
            "init_containers": list(workload.init_containers),
            "containers": [container],
            "volumes": list(workload.volumes),
        }
        if config.device == "gpu":
            pod_spec["tolerations"] = tolerations(platform.gpu_taints)
            if platform.gpu_node_selector:
                pod_spec["node_selector"] = platform.gpu_node_selector

        scaling = config.scaling
        # KEDA only where there is something to decide: a range of replicas, or scaling to zero.
        keda = (
            platform.prometheus_url is not None
            and workload.queue_query is not None
            and (scaling.autoscaled or scaling.min_replicas == 0)
        )
        deployment_spec: k8s.apps.v1.DeploymentSpecArgsDict = {
            "selector": {"match_labels": selector},
            "strategy": _strategy(config),
            "revision_history_limit": 3,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        }
        if not keda:
            deployment_spec["replicas"] = max(scaling.min_replicas, 1)
        # With KEDA the replica count is KEDA's: leaving it unset keeps `pulumi up` from resetting it.
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                "name": workload.backend,
                "namespace": platform.namespace,
                "labels": labels,
                "annotations": scanner_annotations(),
            },
            spec=deployment_spec,
            opts=child,
        )
        service_labels = {**labels, JOB_LABEL: f"slm-{workload.backend}"} if workload.metrics else labels
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": workload.backend, "namespace": platform.namespace, "labels": service_labels},
            spec={
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": BACKEND_PORT, "target_port": "http", "protocol": "TCP"}],
            },
            opts=child,
        )
        # maxUnavailable, not minAvailable: a single replica must not block node drains forever.
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": workload.backend, "namespace": platform.namespace, "labels": labels},
            spec={"max_unavailable": 1, "selector": {"match_labels": selector}},
            opts=child,
        )
        if keda:
            assert platform.prometheus_url is not None and workload.queue_query is not None
            k8s.apiextensions.CustomResource(
                f"{name}-scaler",
                api_version="keda.sh/v1alpha1",
                kind="ScaledObject",
                metadata={"name": workload.backend, "namespace": platform.namespace, "labels": labels},
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": workload.backend},
                    "minReplicaCount": scaling.min_replicas,
                    "maxReplicaCount": scaling.max_replicas,
                    "pollingInterval": POLLING_SECONDS,
                    "cooldownPeriod": scaling.cooldown_seconds,
                    "triggers": [
                        {
                            "type": "prometheus",
                            "metadata": {
                                "serverAddress": platform.prometheus_url,
                                "query": workload.queue_query,
                                # Target per replica: KEDA divides the query's value by it.
                                "threshold": f"{scaling.queue_target:g}",
                                # From zero: wake on the first waiting request.
                                "activationThreshold": "0",
                            },
                        }
                    ],
                },
                opts=pulumi.ResourceOptions.merge(
                    child, pulumi.ResourceOptions(depends_on=[self.deployment, *platform.scaler_depends_on])
                ),
            )

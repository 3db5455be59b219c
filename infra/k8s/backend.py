"""One backend on Kubernetes, from its description (infra/backends): its volumes, the preparation
Job that readies the model, the Deployment (restricted pod, probes sized by the startup budget, GPU
placement), its Service, a PodDisruptionBudget and, with KEDA, a ScaledObject on demand. Nothing
here names an engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pulumi
import pulumi_kubernetes as k8s

from infra import images
from infra.backends.description import Backend, Image, Preparation, Resources, SecretFile
from infra.k8s.namespaces import WORKLOAD_NAMESPACE
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
from infra.k8s.volumes import model_claim

GPU_RESOURCE = "nvidia.com/gpu"
# Where a backend's secret files appear (Paths.secrets on Kubernetes).
SECRETS_MOUNT = "/var/run/secrets/slm"
# KEDA asks Prometheus every this many seconds.
POLLING_SECONDS = 15
# The busybox the wait step runs (only `test` and `sleep` are used).
WAIT_IMAGE = images.BUSYBOX


@dataclass(frozen=True)
class SecretSource:
    """A Kubernetes Secret and its key that hold one of the files backends read."""

    secret: pulumi.Input[str]
    key: str


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
    # Size of a volume whose description leaves it to the stack (storage.sizeGb).
    storage_size_gb: int = 64
    # Queue-depth autoscaling through KEDA's Prometheus scaler; None: fixed replicas.
    prometheus_url: str | None = None
    # KEDA's chart when the stack installs it: ScaledObjects need its CRDs.
    scaler_depends_on: Sequence[pulumi.Resource] = ()
    # Secret file name (infra/conventions) -> where it is kept.
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)
    # (image, variant) -> what workloads run: pushed by digest, or the build-context tag.
    image_refs: Mapping[tuple[str, str], pulumi.Input[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendArgs:
    platform: BackendPlatform
    backend: Backend


def gateway_cluster(namespace: str, backend: str) -> str:
    """The Envoy cluster regex Envoy Gateway names after a route: httproute/<ns>/<route>/rule/<n>."""
    return f"httproute/{namespace}/{backend}/.*"


def demand_query(namespace: str, backend: Backend) -> str:
    """PromQL for the requests waiting for a backend; KEDA divides it by queueTarget per replica.

    Waiting is the backend's own queue gauge, or, for an engine without one that runs a known number
    of requests at once per replica (Backend.parallel), the gateway's requests in flight beyond that
    many per ready replica (kube-state-metrics counts them). Added to it: the rate of requests the
    gateway found no healthy upstream for, the only demand there is at zero replicas (any value above
    0 activates the scaler). An engine that declares neither counts all its requests in flight."""
    cluster = gateway_cluster(namespace, backend.name)
    in_flight = f'sum(envoy_cluster_upstream_rq_active{{envoy_cluster_name=~"{cluster}"}})'
    unserved = f'sum(rate(envoy_cluster_upstream_cx_none_healthy{{envoy_cluster_name=~"{cluster}"}}[2m]))'
    queue = backend.metrics.queue_metric if backend.metrics else None
    if queue is not None:
        waiting = f'sum({queue}{{namespace="{namespace}", service="{backend.name}"}}) or vector(0)'
    elif backend.parallel is not None:
        ready = f'sum(kube_deployment_status_replicas_ready{{namespace="{namespace}", deployment="{backend.name}"}})'
        waiting = f"clamp_min(({in_flight} or vector(0)) - {backend.parallel} * ({ready} or vector(0)), 0)"
    else:
        waiting = f"{in_flight} or vector(0)"
    return f"({waiting}) + ({unserved} or vector(0))"


def labels_for(platform: BackendPlatform, backend: str, component: str = "backend") -> dict[str, str]:
    return {**platform.labels, "app.kubernetes.io/name": backend, "app.kubernetes.io/component": component}


def http_probe(path: str, period: int, failures: int, timeout: int = 5) -> k8s.core.v1.ProbeArgsDict:
    return {
        "http_get": {"path": path, "port": "http"},
        "period_seconds": period,
        "failure_threshold": failures,
        "timeout_seconds": timeout,
    }


def _server_resources(backend: Backend) -> k8s.core.v1.ResourceRequirementsArgsDict:
    r = backend.config.resources
    # A CPU limit equal to the request: the servers size their thread pools from the CPU quota.
    requests = {"cpu": r.cpu, "memory": r.memory}
    limits = {"cpu": r.cpu, "memory": r.memory}
    if backend.gpu:
        # Extended resources: request and limit must match; one whole GPU per replica.
        requests[GPU_RESOURCE] = "1"
        limits[GPU_RESOURCE] = "1"
    return {"requests": requests, "limits": limits}


def _job_resources(r: Resources) -> k8s.core.v1.ResourceRequirementsArgsDict:
    return {
        "requests": {"cpu": r.cpu, "memory": r.memory},
        "limits": {"cpu": r.cpu_limit or r.cpu, "memory": r.memory_limit or r.memory},
    }


def _strategy(backend: Backend) -> k8s.apps.v1.DeploymentStrategyArgsDict:
    if backend.gpu:
        # Never a surge pod: a rollout must not need a second GPU (replace one replica at a time).
        return {"type": "RollingUpdate", "rolling_update": {"max_surge": 0, "max_unavailable": 1}}
    return {"type": "RollingUpdate", "rolling_update": {"max_surge": 1, "max_unavailable": 0}}


def _env(values: Mapping[str, str]) -> list[k8s.core.v1.EnvVarArgsDict]:
    return [{"name": k, "value": v} for k, v in values.items()]


class BackendWorkload(pulumi.ComponentResource):
    """Every Kubernetes object of one backend."""

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service

    def __init__(self, name: str, args: BackendArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:Backend", name, None, opts)
        platform, backend = args.platform, args.backend
        self._name, self._platform, self._backend = name, platform, backend
        self._child = pulumi.ResourceOptions(parent=self, provider=platform.provider)
        labels = labels_for(platform, backend.name)

        claims = {
            v.name: model_claim(
                f"{name}-{v.name}",
                claim=v.claim,
                size_gb=v.size_gb if v.size_gb is not None else platform.storage_size_gb,
                namespace=platform.namespace,
                storage_class=platform.storage_class,
                access_mode=platform.access_mode,
                labels=labels,
                opts=self._child,
            )
            for v in backend.volumes
        }
        self._claim_names = {
            v.name: claims[v.name].metadata.apply(lambda m, claim=v.claim: m.name or claim) for v in backend.volumes
        }
        init_containers: list[k8s.core.v1.ContainerArgsDict] = []
        if backend.preparation is not None:
            self._preparation(backend.preparation, list(claims.values()))
            init_containers.append(self._wait_for(backend.preparation))

        volumes: list[k8s.core.v1.VolumeArgsDict] = [
            {
                "name": v.name,
                "persistent_volume_claim": {"claim_name": self._claim_names[v.name], "read_only": True}
                if v.read_only
                else {"claim_name": self._claim_names[v.name]},
            }
            for v in backend.volumes
        ]
        mounts: list[k8s.core.v1.VolumeMountArgsDict] = [
            {"name": v.name, "mount_path": v.mount, "read_only": True}
            if v.read_only
            else {"name": v.name, "mount_path": v.mount}
            for v in backend.volumes
        ]
        if backend.secrets:
            volumes.append(self._secrets_volume(backend.secrets))
            mounts.append({"name": "secrets", "mount_path": SECRETS_MOUNT, "read_only": True})
        if backend.files:
            assert backend.files_mount is not None
            self._files(backend.files, backend.files_mount, labels, volumes, mounts)
        volumes.append({"name": "tmp", "empty_dir": {}})
        mounts.append({"name": "tmp", "mount_path": "/tmp"})
        if backend.shm_size is not None:
            volumes.append({"name": "shm", "empty_dir": {"medium": "Memory", "size_limit": backend.shm_size}})
            mounts.append({"name": "shm", "mount_path": "/dev/shm"})

        startup_failures = max(1, backend.config.startup_minutes * 60 // 10)
        container: k8s.core.v1.ContainerArgsDict = {
            "name": backend.name,
            "image": self._image(backend.image),
            "image_pull_policy": "IfNotPresent",
            "volume_mounts": mounts,
            "ports": [{"name": "http", "container_port": backend.port, "protocol": "TCP"}],
            "resources": _server_resources(backend),
            "security_context": restricted_container(),
            "startup_probe": http_probe(backend.probes.startup, period=10, failures=startup_failures),
            "readiness_probe": http_probe(backend.probes.readiness, period=10, failures=3),
            "liveness_probe": http_probe(backend.probes.liveness, period=20, failures=3),
        }
        if backend.env:
            container["env"] = _env(backend.env)
        if backend.command is not None:
            container["command"] = list(backend.command)
        if backend.args:
            container["args"] = list(backend.args)
        pod_spec: k8s.core.v1.PodSpecArgsDict = {
            "automount_service_account_token": False,
            "enable_service_links": False,
            "security_context": restricted_pod(WORKLOAD_UID),
            "termination_grace_period_seconds": 60,
            "init_containers": init_containers,
            "containers": [container],
            "volumes": volumes,
        }
        if backend.gpu:
            pod_spec["tolerations"] = tolerations(platform.gpu_taints)
            if platform.gpu_node_selector:
                pod_spec["node_selector"] = platform.gpu_node_selector
        self._serving_objects(labels, pod_spec)
        self.register_outputs({})

    def _image(self, image: Image) -> pulumi.Input[str]:
        if image.upstream is not None:
            return image.upstream
        assert image.own is not None
        return self._platform.image_refs[image.own]

    def _secrets_volume(self, files: Sequence[SecretFile], name: str = "secrets") -> k8s.core.v1.VolumeArgsDict:
        sources: list[k8s.core.v1.VolumeProjectionArgsDict] = []
        for f in files:
            source = self._platform.secrets[f.file]
            sources.append({"secret": {"name": source.secret, "items": [{"key": source.key, "path": f.file}]}})
        return {"name": name, "projected": {"sources": sources, "default_mode": 0o400}}

    def _files(
        self,
        files: Mapping[str, str],
        mount: str,
        labels: dict[str, str],
        volumes: list[k8s.core.v1.VolumeArgsDict],
        mounts: list[k8s.core.v1.VolumeMountArgsDict],
    ) -> k8s.core.v1.ConfigMap:
        """A ConfigMap of plain files, mounted read-only at `mount`."""
        folder = PurePosixPath(mount).name
        files_name = f"{self._backend.name}-{folder}"
        config_map = k8s.core.v1.ConfigMap(
            f"{self._name}-{folder}",
            metadata={"name": files_name, "namespace": self._platform.namespace, "labels": labels},
            data=dict(files),
            opts=self._child,
        )
        volumes.append(
            {"name": "files", "config_map": {"name": config_map.metadata.apply(lambda m: m.name or files_name)}}
        )
        mounts.append({"name": "files", "mount_path": mount, "read_only": True})
        return config_map

    def _wait_for(self, prep: Preparation) -> k8s.core.v1.ContainerArgsDict:
        """Init container: the server starts only once the preparation wrote its ready file."""
        volume = self._backend.volumes[0]
        ready = prep.ready_file
        return {
            "name": "wait-for-model",
            "image": WAIT_IMAGE,
            "command": ["sh", "-c", f"until test -s {ready}; do echo waiting for {ready}; sleep 10; done"],
            "volume_mounts": [{"name": volume.name, "mount_path": volume.mount, "read_only": True}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "16Mi"}},
            "security_context": restricted_container(),
        }

    def _preparation(self, prep: Preparation, claims: Sequence[pulumi.Resource]) -> None:
        """The Job that readies the model on the backend's first volume (read-write for it alone)."""
        platform, backend, child = self._platform, self._backend, self._child
        volume = backend.volumes[0]
        labels = labels_for(platform, backend.name, prep.component)
        volumes: list[k8s.core.v1.VolumeArgsDict] = [
            {"name": volume.name, "persistent_volume_claim": {"claim_name": self._claim_names[volume.name]}},
            {"name": "tmp", "empty_dir": {}},
        ]
        mounts: list[k8s.core.v1.VolumeMountArgsDict] = [
            {"name": volume.name, "mount_path": volume.mount},
            {"name": "tmp", "mount_path": "/tmp"},
        ]
        depends: list[pulumi.Resource] = list(claims)
        if prep.files:
            assert prep.files_mount is not None
            depends.append(self._files(prep.files, prep.files_mount, labels, volumes, mounts))
        if prep.secrets:
            volumes.append(self._secrets_volume(prep.secrets))
            mounts.append({"name": "secrets", "mount_path": SECRETS_MOUNT, "read_only": True})
        container: k8s.core.v1.ContainerArgsDict = {
            "name": prep.name,
            "image": self._image(prep.image),
            "image_pull_policy": "IfNotPresent",
            "env": _env(prep.env),
            "volume_mounts": mounts,
            "resources": _job_resources(prep.resources),
            "security_context": restricted_container(),
        }
        if prep.command is not None:
            container["command"] = list(prep.command)
        if prep.args:
            container["args"] = list(prep.args)
        pod_labels = {**labels, **prep.pod_labels, DOWNLOADS_LABEL: "true"}
        pod_spec: k8s.core.v1.PodSpecArgsDict = {
            "restart_policy": "Never",
            "automount_service_account_token": False,
            "security_context": restricted_pod(prep.uid or WORKLOAD_UID),
            "containers": [container],
            "volumes": volumes,
        }
        if prep.tolerates_gpu_nodes:
            pod_spec["tolerations"] = tolerations(platform.gpu_taints)
        k8s.batch.v1.Job(
            f"{self._name}-prepare",
            metadata={
                "name": f"{prep.name}-{prep.key}",
                "namespace": platform.namespace,
                "labels": {**labels, **prep.pod_labels},
                # Don't hold `pulumi up` for a download or a conversion: the server waits for it.
                "annotations": {"pulumi.com/skipAwait": "true", **scanner_annotations()},
            },
            spec={
                "backoff_limit": prep.retries,
                "active_deadline_seconds": prep.deadline_seconds,
                "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=depends)),
        )

    def _serving_objects(self, labels: dict[str, str], pod_spec: k8s.core.v1.PodSpecArgsDict) -> None:
        platform, backend, child, name = self._platform, self._backend, self._child, self._name
        selector = {"app.kubernetes.io/name": backend.name, "app.kubernetes.io/component": "backend"}
        pod_labels = {**labels, SERVING_LABEL: "true"}
        if backend.downloads_models:
            pod_labels[DOWNLOADS_LABEL] = "true"
        scaling = backend.config.scaling
        # KEDA only where there is something to decide: a range of replicas, or scaling to zero.
        keda = platform.prometheus_url is not None and (scaling.autoscaled or scaling.min_replicas == 0)
        deployment_spec: k8s.apps.v1.DeploymentSpecArgsDict = {
            "selector": {"match_labels": selector},
            "strategy": _strategy(backend),
            "revision_history_limit": 3,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        }
        if not keda:
            deployment_spec["replicas"] = max(scaling.min_replicas, 1)
        # With KEDA the replica count is KEDA's: leaving it unset keeps `pulumi up` from resetting it.
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                "name": backend.name,
                "namespace": platform.namespace,
                "labels": labels,
                "annotations": scanner_annotations(),
            },
            spec=deployment_spec,
            opts=child,
        )
        service_labels = {**labels, JOB_LABEL: backend.metrics.job} if backend.metrics else labels
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": backend.name, "namespace": platform.namespace, "labels": service_labels},
            spec={
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": backend.port, "target_port": "http", "protocol": "TCP"}],
            },
            opts=child,
        )
        # maxUnavailable, not minAvailable: a single replica must not block node drains forever.
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata={"name": backend.name, "namespace": platform.namespace, "labels": labels},
            spec={"max_unavailable": 1, "selector": {"match_labels": selector}},
            opts=child,
        )
        if keda:
            assert platform.prometheus_url is not None
            k8s.apiextensions.CustomResource(
                f"{name}-scaler",
                api_version="keda.sh/v1alpha1",
                kind="ScaledObject",
                metadata={"name": backend.name, "namespace": platform.namespace, "labels": labels},
                spec={
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": backend.name},
                    "minReplicaCount": scaling.min_replicas,
                    "maxReplicaCount": scaling.max_replicas,
                    "pollingInterval": POLLING_SECONDS,
                    "cooldownPeriod": scaling.cooldown_seconds,
                    "triggers": [
                        {
                            "type": "prometheus",
                            "metadata": {
                                "serverAddress": platform.prometheus_url,
                                "query": demand_query(WORKLOAD_NAMESPACE, backend),
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

"""The stack's pools, pods and VM services as the placement model (infra/placement.py) sees them,
from the settings alone: the config rules judge them before any resource exists, and the
scheduling tests hold the rendered objects against the same pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infra.placement import (
    AKS_DAEMONSETS,
    CERT_MANAGER_PODS,
    ENVOY_GATEWAY_PODS,
    GPU_NODE_DAEMONSETS,
    KEDA_PODS,
    KIND_NODE_PODS,
    MONITORING_PODS,
    NODE_EXPORTER,
    Capacity,
    GpuMemory,
    Overhead,
    Pod,
    Pool,
    aks_allocatable,
    kind_allocatable,
    mebibytes,
    millicores,
    toleration_of,
    vm_facts,
)

if TYPE_CHECKING:
    from infra.backends.description import Backend
    from infra.config import StackSettings

_K = "slm-serving:"
# Open WebUI's requests (infra/k8s/web_ui.py) and its limits on the VM's Compose file.
WEB_UI_REQUESTS = Capacity(250, 1024)
# What the VM's own services take beside the backends: the OS, Docker, and the Compose services
# without limits (Caddy, Prometheus, Grafana, node and DCGM exporters). A budget.
VM_HOST_MEMORY_MIB = 3072
# AKS labels every node with its pool's mode.
SYSTEM_POOL_LABELS = {"kubernetes.azure.com/mode": "system"}


def gpu_taints(s: StackSettings) -> tuple[str, ...]:
    """The taints GPU pods tolerate: every GPU pool's on aks (as infra/targets/aks.py), cluster.gpuNodes'."""
    if s.target == "aks":
        from infra.azure.gpu_pool import pool_taints  # noqa: PLC0415 (Azure SDK: only on aks)

        return tuple(dict.fromkeys(t for pool in s.aks.gpu_pools for t in pool_taints(pool)))
    return s.cluster.gpu_nodes.taints if s.target == "cluster" else ()


def gpu_labels(s: StackSettings) -> dict[str, str]:
    """The labels GPU pods select: those every GPU pool shares on aks, cluster.gpuNodes' labels."""
    if s.target == "aks":
        pools = s.aks.gpu_pools
        return dict(set.intersection(*(set(p.labels.items()) for p in pools))) if pools else {}
    return dict(s.cluster.gpu_nodes.labels) if s.target == "cluster" else {}


def _node_daemonsets(s: StackSettings) -> tuple[Overhead, ...]:
    return (NODE_EXPORTER,) if s.monitoring.install else ()


def _gpu_daemonsets(s: StackSettings) -> tuple[Overhead, ...]:
    plugin = s.addons.nvidia_device_plugin if s.addons.nvidia_device_plugin is not None else s.uses_gpu
    device_plugin, dcgm = GPU_NODE_DAEMONSETS
    return (*((device_plugin,) if plugin else ()), *((dcgm,) if s.monitoring.install and s.uses_gpu else ()))


def aks_pools(s: StackSettings) -> list[Pool]:
    """The system pool and every GPU pool, each with one node's allocatable and its DaemonSets."""
    from infra.azure.gpu_pool import pool_taints  # noqa: PLC0415 (Azure SDK: only on aks)

    version = s.aks.kubernetes_version
    system = s.aks.system_pool
    pools = [
        Pool(
            "system",
            system.vm_size,
            aks_allocatable(system.vm_size, version=version),
            (*AKS_DAEMONSETS, *_node_daemonsets(s)),
            labels=SYSTEM_POOL_LABELS,
        )
    ]
    for gpu in s.aks.gpu_pools:
        facts = vm_facts(gpu.vm_size)
        pools.append(
            Pool(
                gpu.name,
                gpu.vm_size,
                aks_allocatable(gpu.vm_size, version=version),
                (*AKS_DAEMONSETS, *_node_daemonsets(s), *_gpu_daemonsets(s)),
                taints=tuple(pool_taints(gpu)),
                labels=dict(gpu.labels),
                gpus=facts.gpus,
                gpu_memory_gib=facts.gpu_memory_gib,
            )
        )
    return pools


def cluster_pools(s: StackSettings) -> list[Pool]:
    """The nodes `cluster.nodes` describes (none when it is unset: the cluster's scheduler decides)."""
    nodes = s.cluster.nodes
    if nodes is None:
        return []
    cpus = millicores(nodes.cpu) // 1000
    overheads = (*(KIND_NODE_PODS if nodes.control_plane else ()), *_node_daemonsets(s))
    size = f"{nodes.cpu} CPU / {nodes.memory}"
    return [
        Pool(
            "nodes",
            size,
            kind_allocatable(cpus, mebibytes(nodes.memory)),
            overheads,
            reserved_by="the kubelet's eviction threshold" + (" and the control plane" if nodes.control_plane else ""),
        )
    ]


def pools(s: StackSettings) -> list[Pool]:
    if s.target == "aks":
        return aks_pools(s)
    if s.target == "cluster":
        return cluster_pools(s)
    return []


def addon_pods(s: StackSettings) -> list[Overhead]:
    """The add-ons' Deployments on a cluster the stack installs them on (they share its nodes)."""
    found: list[Overhead] = []
    if s.addons.envoy_gateway:
        found += ENVOY_GATEWAY_PODS
    else:  # the gateway's own proxies run whoever installed the controller
        found.append(ENVOY_GATEWAY_PODS[1])
    if s.addons.cert_manager:
        found += CERT_MANAGER_PODS
    if s.addons.keda:
        found += KEDA_PODS
    if s.monitoring.install:
        found += MONITORING_PODS
    return found


def described(s: StackSettings) -> list[Backend]:
    from infra.backends import registry  # noqa: PLC0415 (the registry imports the config package)
    from infra.backends.description import Paths  # noqa: PLC0415

    return registry.enabled(s.backends, Paths(secrets="/run/secrets", hf_token=True))


def _requests(cpu: str, memory: str) -> Capacity:
    return Capacity(millicores(cpu), mebibytes(memory))


@dataclass(frozen=True)
class Replicated:
    pod: Pod
    replicas: int


def pods(s: StackSettings) -> list[Replicated]:
    """Every pod template the stack renders on Kubernetes, with how many replicas run at rest."""
    taints, labels = gpu_taints(s), gpu_labels(s)
    gpu_tolerations = tuple(toleration_of(t) for t in taints)
    found: list[Replicated] = []
    for backend in described(s):
        name, config = backend.name, backend.config
        r = config.resources
        server = Pod(
            f"{name} server",
            f"{_K}backends.{name}.resources",
            _requests(r.cpu, r.memory),
            gpus=1 if backend.gpu else 0,
            gpu_memory=backend.gpu_memory,
            tolerations=gpu_tolerations if backend.gpu else (),
            node_selector=labels if backend.gpu else {},
        )
        found.append(Replicated(server, max(1, config.scaling.min_replicas)))
        prep = backend.preparation
        if prep is not None:
            key = f"{_K}backends.{name}" + (f".{prep.resources_key}" if prep.resources_key else "")
            job = Pod(
                f"{name} {prep.name} job",
                key,
                _requests(prep.resources.cpu, prep.resources.memory),
                tolerations=gpu_tolerations if prep.tolerates_gpu_nodes else (),
            )
            found.append(Replicated(job, 1))
    if s.web_ui.enabled:
        found.append(Replicated(Pod("open-webui", f"{_K}webUi.enabled", WEB_UI_REQUESTS), 1))
    return found


# --- the VM: Compose services on one host --------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A Compose service's limits, as infra/vm/compose.py writes them from the descriptions."""

    name: str
    key: str
    limits: Capacity
    # Runs once and exits (a preparation step) rather than serving.
    one_shot: bool = False
    gpu: bool = False
    gpu_memory: GpuMemory | None = None


def vm_services(s: StackSettings) -> list[Service]:
    found: list[Service] = []
    for backend in described(s):
        name, r = backend.name, backend.config.resources
        found.append(
            Service(
                name,
                f"{_K}backends.{name}.resources",
                _requests(r.cpu, r.memory),
                gpu=backend.gpu,
                gpu_memory=backend.gpu_memory,
            )
        )
        prep = backend.preparation
        if prep is not None:
            res = prep.resources
            key = f"{_K}backends.{name}" + (f".{prep.resources_key}" if prep.resources_key else "")
            limits = _requests(res.cpu_limit or res.cpu, res.memory_limit or res.memory)
            found.append(Service(prep.name, key, limits, one_shot=True))
    if s.web_ui.enabled:
        # Compose sets it no limit: budgeted at its Kubernetes request.
        found.append(Service("webui", f"{_K}webUi.enabled", WEB_UI_REQUESTS))
    return found

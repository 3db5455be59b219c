"""Where a pod can run: what a node offers its pods after the platform's reservations and the
DaemonSets every node runs, and whether a pod's requests, tolerations and node selector fit a pool.

Plain data and arithmetic (no Pulumi, no config): the config rules and the scheduling tests share it.

AKS node allocatable (https://learn.microsoft.com/en-us/azure/aks/node-resource-reservations):

- CPU: kube-reserved millicores by core count, 1: 60, 2: 100, 4: 140, 8: 180, 16: 260, 32: 420,
  64: 740; between two rows the reservation is linear (the rows above 4 cores are 140 + 10 per core,
  which also gives 6, 12, 24, 36, 48 and 96 cores).
- Memory, AKS 1.29 and later: kube-reserved = min(20 MB x max pods + 50 MB, 25% of the VM's
  memory), plus the kubelet's eviction threshold memory.available < 100Mi.
- Memory, before 1.29: 25% of the first 4 GB, 20% of the next 4 GB, 10% of the next 8 GB, 6% of the
  next 112 GB, 2% above 128 GB, plus an eviction threshold of 750Mi.

The stack's pools set max pods to 110 (infra/azure/aks.py, infra/azure/gpu_pool.py): 2250 MiB
kube-reserved on any node of 9 GiB or more. MB are counted as MiB (the larger, so never optimistic),
and a VM's memory is Azure's nominal size: the kernel's own share is not known before the node
exists, so leave headroom rather than requesting the last MiB.

A kind node (https://kind.sigs.k8s.io, its kubeadm config) reserves nothing for kube or system
daemons; its kubelet keeps the default memory.available < 100Mi. A single kind node is also the
control plane: its static pods and kind's own add-ons request CPU and memory (KIND_NODE_PODS).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from infra.vm_sizes import CPU_SIZES, GPU_SIZES

# Max pods per node on every pool the stack creates (infra/azure/aks.py, infra/azure/gpu_pool.py).
AKS_MAX_PODS = 110
# The kubelet's hard eviction threshold for memory.available (AKS 1.29+, and the kubelet default).
EVICTION_MIB = 100
EVICTION_MIB_BEFORE_1_29 = 750
_CPU_RESERVED_MILLICORES = ((1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740))
# The pre-1.29 regressive rule: (size of the band in GiB, share reserved); the last band is unbounded.
_MEMORY_BANDS_BEFORE_1_29 = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (None, 0.02))


# --- quantities --------------------------------------------------------------------------------

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_FACTORS = {
    None: 1 / 2**20,
    "Ki": 1 / 1024,
    "Mi": 1,
    "Gi": 1024,
    "Ti": 1024**2,
    "k": 1e3 / 2**20,
    "M": 1e6 / 2**20,
    "G": 1e9 / 2**20,
    "T": 1e12 / 2**20,
}


def millicores(quantity: str | float) -> int:
    """A Kubernetes CPU quantity ('4', '0.5', '3500m') in millicores."""
    match = _CPU.match(str(quantity))
    if match is None:
        raise ValueError(f"{quantity!r} is not a CPU quantity")
    number, milli = float(match.group(1)), match.group(2)
    return round(number if milli else number * 1000)


def mebibytes(quantity: str | float) -> int:
    """A Kubernetes memory quantity ('8Gi', '512Mi', '1G') in MiB, rounded up."""
    match = _MEMORY.match(str(quantity))
    if match is None:
        raise ValueError(f"{quantity!r} is not a memory quantity")
    mib = float(match.group(1)) * _MEMORY_FACTORS[match.group(2)]
    return int(-(-mib // 1))


def cpu_text(millis: int) -> str:
    return f"{millis / 1000:g}"


def memory_text(mib: int) -> str:
    return f"{mib / 1024:.1f}Gi" if mib >= 1024 else f"{mib}Mi"


# --- what a node offers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    cpu_m: int
    memory_mi: int

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpu_m - other.cpu_m, self.memory_mi - other.memory_mi)

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpu_m + other.cpu_m, self.memory_mi + other.memory_mi)


def total(items: Iterable[Capacity]) -> Capacity:
    result = Capacity(0, 0)
    for item in items:
        result += item
    return result


def aks_cpu_reserved_m(cores: int) -> int:
    """AKS's kube-reserved CPU for a node of `cores` (the documented table, linear between rows)."""
    rows = _CPU_RESERVED_MILLICORES
    if cores <= rows[0][0]:
        return rows[0][1]
    for (low, low_m), (high, high_m) in pairwise(rows):
        if cores <= high:
            return round(low_m + (high_m - low_m) * (cores - low) / (high - low))
    last, last_m = rows[-1]
    # Above the table the 10 millicores per core of every row past 4 cores continue.
    return last_m + 10 * (cores - last)


def _before_1_29(version: str | None) -> bool:
    if version is None:  # AKS's default version is newer than 1.29
        return False
    minor = int(version.split(".")[1])
    return minor < 29


def aks_memory_reserved_mi(memory_mi: int, max_pods: int = AKS_MAX_PODS, version: str | None = None) -> int:
    """kube-reserved plus the eviction threshold, in MiB, for a node of `memory_mi`."""
    if not _before_1_29(version):
        return min(20 * max_pods + 50, memory_mi // 4) + EVICTION_MIB
    reserved, left = 0.0, memory_mi / 1024
    for band, share in _MEMORY_BANDS_BEFORE_1_29:
        part = left if band is None else min(left, band)
        reserved += part * share
        left -= part
    return int(-(-reserved * 1024 // 1)) + EVICTION_MIB_BEFORE_1_29


@dataclass(frozen=True)
class VmFacts:
    vcpus: int
    memory_gib: int
    gpus: int
    gpu_memory_gib: int  # per GPU


def vm_facts(vm_size: str) -> VmFacts:
    if vm_size in GPU_SIZES:
        g = GPU_SIZES[vm_size]
        return VmFacts(g.vcpus, g.memory_gib, g.gpu_count, g.gpu_memory_gib)
    c = CPU_SIZES[vm_size]
    return VmFacts(c.vcpus, c.memory_gib, 0, 0)


def aks_allocatable(vm_size: str, max_pods: int = AKS_MAX_PODS, version: str | None = None) -> Capacity:
    """What the kubelet of an AKS node of `vm_size` reports as allocatable."""
    facts = vm_facts(vm_size)
    memory = facts.memory_gib * 1024
    return Capacity(
        facts.vcpus * 1000 - aks_cpu_reserved_m(facts.vcpus),
        memory - aks_memory_reserved_mi(memory, max_pods, version),
    )


def kind_allocatable(cpus: int, memory_mi: int) -> Capacity:
    """A kind node: no kube or system reservation, the kubelet's default eviction threshold."""
    return Capacity(cpus * 1000, memory_mi - EVICTION_MIB)


# --- what runs on every node, or beside the stack on a shared node ------------------------------


@dataclass(frozen=True)
class Overhead:
    """Pods that take requests from a node before the stack's own (DaemonSets, add-ons)."""

    name: str
    requests: Capacity
    source: str


# AKS's own kube-system DaemonSets on a Linux node with Azure CNI overlay + Cilium and Container
# Insights (the add-ons infra/azure/aks.py turns on). AKS manages and versions these manifests;
# they cannot be read offline, so each is a budget at or above the requests AKS sets.
AKS_DAEMONSETS = (
    Overhead("cilium", Capacity(100, 128), "AKS-managed Cilium agent (network_dataplane cilium)"),
    Overhead("azure-cns", Capacity(40, 250), "AKS-managed Azure CNS (CNI overlay)"),
    Overhead("cloud-node-manager", Capacity(50, 50), "AKS-managed"),
    Overhead("csi-azuredisk-node", Capacity(30, 60), "AKS-managed disk CSI driver, three containers"),
    Overhead("csi-azurefile-node", Capacity(30, 60), "AKS-managed file CSI driver, three containers"),
    Overhead("ama-logs", Capacity(150, 550), "Container Insights agent (addon omsagent)"),
)
# The stack's own DaemonSets. It sets no requests on them; each is budgeted so a chart default
# (kube-prometheus-stack 79.7.1 node exporter, nvidia-device-plugin 0.18.0, dcgm-exporter 4.6.0)
# or a later override never takes a node the check called free.
NODE_EXPORTER = Overhead("node-exporter", Capacity(50, 64), "kube-prometheus-stack, every node")
GPU_NODE_DAEMONSETS = (
    Overhead("nvidia-device-plugin", Capacity(50, 64), "infra/k8s/addons.py, GPU nodes"),
    Overhead("dcgm-exporter", Capacity(100, 128), "infra/k8s/monitoring.py, GPU nodes"),
)

# A single-node kind cluster is its own control plane. kubeadm's static pods request CPU (etcd also
# memory); CoreDNS (two replicas) and kindnet request both; kube-proxy and local-path request none.
KIND_NODE_PODS = (
    Overhead("kube-apiserver", Capacity(250, 0), "kubeadm static pod"),
    Overhead("kube-controller-manager", Capacity(200, 0), "kubeadm static pod"),
    Overhead("kube-scheduler", Capacity(100, 0), "kubeadm static pod"),
    Overhead("etcd", Capacity(100, 100), "kubeadm static pod"),
    Overhead("coredns x2", Capacity(200, 140), "kubeadm's CoreDNS Deployment, 100m/70Mi each"),
    Overhead("kindnet", Capacity(100, 50), "kind's CNI DaemonSet"),
)

# The add-ons the stack installs on a cluster, with the requests their charts set (values read from
# each chart's values.yaml at the pinned version; `resources: {}` requests nothing).
ENVOY_GATEWAY_PODS = (
    Overhead("envoy-gateway", Capacity(100, 256), "gateway-helm v1.6.3 deployment.envoyGateway.resources"),
    Overhead("envoy proxies x2", Capacity(200, 512), "infra/k8s/gateway.py EnvoyProxy: 2 x 100m/256Mi"),
)
CERT_MANAGER_PODS = (
    Overhead("cert-manager, cainjector, webhook", Capacity(0, 0), "cert-manager v1.19.2: resources {}"),
)
KEDA_PODS = (Overhead("keda operator, metrics server, webhooks", Capacity(300, 300), "keda 2.18.1: 100m/100Mi each"),)
MONITORING_PODS = (
    Overhead(
        "prometheus, alertmanager, grafana, operator, kube-state-metrics",
        Capacity(0, 0),
        "kube-prometheus-stack 79.7.1: resources {} (the stack sets none)",
    ),
)


# --- pools, pods and the fit -------------------------------------------------------------------


def _taint_parts(taint: str) -> tuple[str, str, str]:
    key_value, effect = taint.rsplit(":", 1)
    key, _, value = key_value.partition("=")
    return key, value, effect


@dataclass(frozen=True)
class Toleration:
    key: str | None
    operator: str = "Equal"
    value: str = ""
    effect: str | None = None

    @classmethod
    def of(cls, spec: Mapping[str, object]) -> Toleration:
        """From a rendered pod spec's toleration (camelCase or snake_case keys alike)."""
        key, effect = spec.get("key"), spec.get("effect")
        return cls(
            key=str(key) if key else None,
            operator=str(spec.get("operator") or "Equal"),
            value=str(spec.get("value") or ""),
            effect=str(effect) if effect else None,
        )

    def matches(self, taint: str) -> bool:
        key, value, effect = _taint_parts(taint)
        if self.effect is not None and self.effect != effect:
            return False
        if self.key is None:
            return self.operator == "Exists"
        if self.key != key:
            return False
        return self.operator == "Exists" or self.value == value


def toleration_of(taint: str) -> Toleration:
    key, value, effect = _taint_parts(taint)
    return Toleration(key, "Equal", value, effect)


@dataclass(frozen=True)
class Pool:
    """Nodes of one size with the same taints and labels."""

    name: str
    size: str
    allocatable: Capacity
    overheads: tuple[Overhead, ...] = ()
    taints: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    gpu_memory_gib: int = 0
    # How much of the platform's reservation `allocatable` already reflects (for messages).
    reserved_by: str = "AKS's reservations"

    @property
    def free(self) -> Capacity:
        """What the stack's pods may request on one node."""
        return self.allocatable - total(o.requests for o in self.overheads)

    def describe(self) -> str:
        return f"{self.name} pool {self.size}"


@dataclass(frozen=True)
class Pod:
    """One pod template's needs. `key` is the stack config key its requests come from."""

    name: str
    key: str
    requests: Capacity
    gpus: int = 0
    # What it holds on its GPU (None: not estimated).
    gpu_memory: GpuMemory | None = None
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)


def tolerates(pod: Pod, pool: Pool) -> bool:
    """Every taint that keeps pods off (NoSchedule, NoExecute) has a matching toleration."""
    blocking = [t for t in pool.taints if _taint_parts(t)[2] != "PreferNoSchedule"]
    return all(any(tol.matches(t) for tol in pod.tolerations) for t in blocking)


def selects(pod: Pod, pool: Pool) -> bool:
    return all(pool.labels.get(k) == v for k, v in pod.node_selector.items())


def eligible(pod: Pod, pools: Sequence[Pool]) -> list[Pool]:
    """Pools whose taints the pod tolerates and whose labels it selects."""
    return [p for p in pools if tolerates(pod, p) and selects(pod, p)]


def shortfalls(pod: Pod, pool: Pool) -> list[str]:
    """What the pod needs that one node of the pool does not have (empty: it fits)."""
    free, need = pool.free, pod.requests
    found = []
    if need.cpu_m > free.cpu_m:
        found.append(f"cpu {cpu_text(need.cpu_m)} > {cpu_text(free.cpu_m)}")
    if need.memory_mi > free.memory_mi:
        found.append(f"memory {memory_text(need.memory_mi)} > {memory_text(free.memory_mi)}")
    if pod.gpus > pool.gpus:
        found.append(f"nvidia.com/gpu {pod.gpus} > {pool.gpus}")
    if pod.gpus and pod.gpu_memory is not None and pod.gpu_memory.on(pool.gpu_memory_gib) > pool.gpu_memory_gib:
        found.append(f"GPU memory {pod.gpu_memory.on(pool.gpu_memory_gib):.1f}GiB > {pool.gpu_memory_gib}GiB")
    return found


def fits(pod: Pod, pool: Pool) -> bool:
    return not shortfalls(pod, pool)


def placement(pod: Pod, pools: Sequence[Pool]) -> Pool | None:
    """The first pool the pod may use and fits on, or None."""
    return next((p for p in eligible(pod, pools) if fits(pod, p)), None)


def largest(pools: Sequence[Pool]) -> Pool:
    return max(pools, key=lambda p: (p.free.cpu_m, p.free.memory_mi, p.gpus))


@dataclass(frozen=True)
class GpuMemory:
    """GPU memory a server holds: a share of the whole GPU (vLLM preallocates one), a fixed size, and
    a cache whose size follows the GPU's: (GPU GiB below which, cache GiB) tiers, smallest first."""

    share: float = 0.0
    gib: float = 0.0
    cache_tiers: tuple[tuple[float, float], ...] = ()
    # Where the number comes from, and the `backends.<name>` key that changes it (placement errors).
    basis: str = ""
    key: str = ""

    def on(self, gpu_gib: float) -> float:
        cache = next((c for below, c in self.cache_tiers if gpu_gib < below), 0.0)
        return self.share * gpu_gib + self.gib + cache

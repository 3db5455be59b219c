"""What runs where: every pod template a committed stack renders fits one node of a pool whose taints
it tolerates and whose labels it selects, and the VM's Compose services fit the VM together.

The pods are read from the real render (Deployments, Jobs, StatefulSets the program registers). The
Kubernetes scheduler cannot run here: the fit below is its NodeResourcesFit (requests: the larger of
the containers' sum and any init container), TaintToleration (NoSchedule and NoExecute taints need a
matching toleration) and nodeSelector rules as the Kubernetes 1.33 scheduling docs state them. The
nodes' allocatable comes from infra/placement.py (AKS's documented reservations; kind reserves none)
and is pinned in POOLS so a reviewer reads the numbers here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest

from infra.backends import ollama
from infra.config import NAMESPACE, StackSettings
from infra.placement import (
    KIND_NODE_PODS,
    NODE_EXPORTER,
    Capacity,
    Pod,
    Pool,
    Toleration,
    aks_allocatable,
    aks_cpu_reserved_m,
    aks_memory_reserved_mi,
    eligible,
    fits,
    kind_allocatable,
    mebibytes,
    millicores,
    tolerates,
    total,
    vm_facts,
)
from infra.stack_placement import VM_HOST_MEMORY_MIB, addon_pods, described, pools
from offline.recording import Recording
from offline.render import read_stack_config
from tests.conftest import run_stack
from tests.test_compose import vllm_serve, vm_compose

SPOT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"

# --- the pools: one node's allocatable after the platform's reservations, and what is left for the
# stack's pods after the DaemonSets every node runs (cpu in millicores / memory in MiB) -------------
POOLS: dict[str, dict[str, dict[str, Any]]] = {
    "prod": {
        "system": {
            "size": "Standard_D4ds_v5",
            "allocatable": "3860m / 14034Mi",
            "free": "3410m / 12872Mi",
            "taints": (),
            "gpus": 0,
        },
        "a10": {
            "size": "Standard_NV36ads_A10_v5",
            "allocatable": "35540m / 448210Mi",
            "free": "34940m / 446856Mi",
            "taints": ("sku=gpu:NoSchedule",),
            "gpus": 1,
        },
        "t4spot": {
            "size": "Standard_NC8as_T4_v3",
            "allocatable": "7820m / 54994Mi",
            "free": "7220m / 53640Mi",
            "taints": ("sku=gpu:NoSchedule", SPOT),
            "gpus": 1,
        },
    },
    # Assumed laptop: one kind node of 4 CPUs and 8 GiB (cluster.nodes in Pulumi.local.yaml), which is
    # also the control plane; kind reserves nothing but the kubelet's 100Mi eviction threshold.
    "local": {
        "nodes": {
            "size": "4 CPU / 8Gi",
            "allocatable": "4000m / 8092Mi",
            "free": "3000m / 7738Mi",
            "taints": (),
            "gpus": 0,
        },
    },
}

# --- what runs where: each rendered pod template and the pools it fits on (of those it may use) -----
PLACEMENTS: dict[str, dict[str, tuple[str, ...]]] = {
    "prod": {
        "Deployment vllm": ("a10", "t4spot"),
        "Deployment ollama": ("a10", "t4spot"),
        "Deployment onnx": ("system",),  # no GPU: the GPU pools' taints keep it on the system pool
        "Job ollama-pull": ("system",),
        "Job convert": ("a10", "t4spot"),  # tolerates the GPU taints; 32Gi is more than a system node has
    },
    "local": {
        "Deployment onnx": ("nodes",),
        "Job convert": ("nodes",),
    },
}

# --- the VM (dev): one host, every Compose service on it ---------------------------------------------
# One-shot steps run beside the servers that do not wait for them, so the check counts every server's
# memory limit plus the largest step's; VM_HOST_MEMORY_MIB stays for the OS and unlimited services.
VM_STACKS = {"dev": "Standard_NC4as_T4_v3"}

# The laptop the local stack is sized for (README: "Where pods run"); Pulumi.local.yaml's
# cluster.nodes must say the same (the pools table above is computed from it).
LAPTOP_CPUS, LAPTOP_MEMORY_MIB = 4, 8 * 1024

_KINDS = {
    "kubernetes:apps/v1:Deployment": "Deployment",
    "kubernetes:batch/v1:Job": "Job",
    "kubernetes:apps/v1:StatefulSet": "StatefulSet",
}
_JOB_KEY = re.compile(r"-[0-9a-f]{12,}$")
GPU = "nvidia.com/gpu"


def _decoded(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def settings_of(stack: str) -> StackSettings:
    raw = {
        key.split(":", 1)[1]: _decoded(value)
        for key, value in read_stack_config(stack).config.items()
        if key.startswith(f"{NAMESPACE}:") and key.split(":", 1)[1] not in ("hfToken", "kubeconfig")
    }
    return StackSettings.model_validate_json(json.dumps(raw))


def _container_requests(container: Mapping[str, Any]) -> tuple[Capacity, int]:
    resources = container.get("resources") or {}
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    cpu = requests.get("cpu", limits.get("cpu", "0"))
    memory = requests.get("memory", limits.get("memory", "0"))
    gpus = int(float(limits.get(GPU, requests.get(GPU, 0))))
    return Capacity(millicores(cpu), mebibytes(memory)), gpus


def pod_of(name: str, spec: Mapping[str, Any], settings: StackSettings, backend: str | None) -> Pod:
    """A rendered pod spec's effective requests (the scheduler's rule), tolerations and selector."""
    main = [_container_requests(c) for c in spec["containers"]]
    init = [_container_requests(c) for c in spec.get("initContainers") or []]
    summed = total(c for c, _ in main)
    cpu = max([summed.cpu_m, *(c.cpu_m for c, _ in init)])
    memory = max([summed.memory_mi, *(c.memory_mi for c, _ in init)])
    gpus = sum(g for _, g in main)
    estimates = {b.name: b.gpu_memory for b in described(settings)}
    return Pod(
        name,
        name,
        Capacity(cpu, memory),
        gpus=gpus,
        gpu_memory=estimates.get(backend or "") if gpus else None,
        tolerations=tuple(Toleration.of(t) for t in spec.get("tolerations") or []),
        node_selector=dict(spec.get("nodeSelector") or {}),
    )


def rendered_pods(rec: Recording, settings: StackSettings) -> dict[str, tuple[Pod, int]]:
    """Every pod template of the stack's own workloads, by '<Kind> <name>', with its replicas."""
    found: dict[str, tuple[Pod, int]] = {}
    for reg in rec.resources:
        kind = _KINDS.get(reg.type)
        if kind is None:
            continue
        manifest = reg.plain
        metadata = manifest["metadata"]
        name = f"{kind} {_JOB_KEY.sub('', metadata['name'])}"
        backend = (metadata.get("labels") or {}).get("app.kubernetes.io/name")
        replicas = int(manifest["spec"].get("replicas", 1)) if kind != "Job" else 1
        found[name] = (pod_of(name, manifest["spec"]["template"]["spec"], settings, backend), replicas)
    return found


def _quantities(capacity: Capacity) -> str:
    return f"{capacity.cpu_m}m / {capacity.memory_mi}Mi"


def pool_rows(stack_pools: list[Pool]) -> dict[str, dict[str, Any]]:
    return {
        p.name: {
            "size": p.size,
            "allocatable": _quantities(p.allocatable),
            "free": _quantities(p.free),
            "taints": p.taints,
            "gpus": p.gpus,
        }
        for p in stack_pools
    }


def laptop_node(settings: StackSettings) -> Pool:
    """The assumed kind node, independent of what the stack file says about it."""
    overheads = (*KIND_NODE_PODS, *((NODE_EXPORTER,) if settings.monitoring.install else ()))
    allocatable = kind_allocatable(LAPTOP_CPUS, LAPTOP_MEMORY_MIB)
    return Pool("nodes", f"{LAPTOP_CPUS} CPU / {LAPTOP_MEMORY_MIB // 1024}Gi", allocatable, overheads)


def stack_pools(stack: str, settings: StackSettings) -> list[Pool]:
    return [laptop_node(settings)] if stack == "local" else pools(settings)


@pytest.mark.parametrize("stack", sorted(POOLS))
def test_the_pools_table_is_what_the_placement_model_computes(stack: str) -> None:
    settings = settings_of(stack)
    assert pool_rows(pools(settings)) == POOLS[stack]
    assert pool_rows(stack_pools(stack, settings)) == POOLS[stack]


@pytest.mark.parametrize("stack", sorted(PLACEMENTS))
def test_every_rendered_pod_fits_a_pool_it_may_use(stack: str) -> None:
    settings = settings_of(stack)
    candidates = stack_pools(stack, settings)
    placed = {
        name: tuple(p.name for p in eligible(pod, candidates) if fits(pod, p))
        for name, (pod, _) in rendered_pods(run_stack(stack), settings).items()
    }
    assert placed == PLACEMENTS[stack]


def test_the_local_stack_fits_one_laptop_kind_node_with_its_add_ons() -> None:
    """Everything at once on the single node: the stack's pods, the add-ons and the control plane."""
    settings = settings_of("local")
    node = laptop_node(settings)
    pods = rendered_pods(run_stack("local"), settings)
    stack = total(Capacity(p.requests.cpu_m * n, p.requests.memory_mi * n) for p, n in pods.values())
    addons = total(a.requests for a in addon_pods(settings))
    demand = stack + addons
    assert {o.name for o in KIND_NODE_PODS} <= {o.name for o in node.overheads}
    assert demand.cpu_m <= node.free.cpu_m, f"{demand} > {node.free}"
    assert demand.memory_mi <= node.free.memory_mi, f"{demand} > {node.free}"


def _vllm_share(service: dict[str, Any]) -> float:
    serve = vllm_serve(service)
    return float(serve[serve.index("--gpu-memory-utilization") + 1])


def _ollama_gib(service: Mapping[str, Any], gpu_gib: float) -> float:
    environment = service["environment"]
    if isinstance(environment, list):  # KEY=value items
        environment = dict(item.split("=", 1) for item in environment)
    parallel = int(environment["OLLAMA_NUM_PARALLEL"])
    settings = settings_of("dev")
    model = ollama.gpu_memory(settings.backends.ollama.model_copy(update={"num_parallel": parallel}))
    assert model is not None, "the Ollama model's GPU footprint is known"
    return model.on(gpu_gib)


def vm_services(stack: str) -> dict[str, Any]:
    size = VM_STACKS[stack]
    assert settings_of(stack).vm.size == size
    return vm_compose(run_stack(stack))["services"]


@pytest.mark.parametrize("stack", sorted(VM_STACKS))
def test_the_vm_services_fit_the_vm_together(stack: str) -> None:
    facts = vm_facts(VM_STACKS[stack])
    services = vm_services(stack)
    one_shot = {
        dep
        for svc in services.values()
        if isinstance(svc.get("depends_on"), dict)
        for dep, cond in svc["depends_on"].items()
        if cond.get("condition") == "service_completed_successfully"
    }
    limits = {
        n: s["deploy"]["resources"]["limits"]
        for n, s in services.items()
        if "limits" in s.get("deploy", {}).get("resources", {})
    }
    for name, limit in limits.items():
        assert float(limit["cpus"]) <= facts.vcpus, f"{name}: Docker refuses more CPUs than the VM has"
    memory = {n: mebibytes(lim["memory"].replace("g", "Gi").replace("m", "Mi")) for n, lim in limits.items()}
    held = sum(m for n, m in memory.items() if n not in one_shot) + max(m for n, m in memory.items() if n in one_shot)
    assert held <= facts.memory_gib * 1024 - VM_HOST_MEMORY_MIB, memory


@pytest.mark.parametrize("stack", sorted(VM_STACKS))
def test_the_gpu_backends_share_the_vms_gpu_within_its_memory(stack: str) -> None:
    gpu_gib = vm_facts(VM_STACKS[stack]).gpu_memory_gib
    services = vm_services(stack)
    on_gpu = _vllm_share(services["vllm"]) * gpu_gib + _ollama_gib(services["ollama"], gpu_gib)
    assert on_gpu <= gpu_gib, f"vLLM and Ollama hold {on_gpu:.1f} GiB of the {gpu_gib} GiB GPU"


# --- the model itself, against the documented examples ------------------------------------------------


def test_aks_reservations_follow_the_documented_examples() -> None:
    """learn.microsoft.com/azure/aks/node-resource-reservations: its worked examples and CPU table."""
    # 8 GB and 30 max pods: 20 MB x 30 + 50 MB = 650 MB kube-reserved, plus the 100Mi threshold.
    assert aks_memory_reserved_mi(8 * 1024, max_pods=30) == 650 + 100
    # 4 GB and 70 max pods: 25% of 4 GB = 1000 MB is less than 20 MB x 70 + 50 MB = 1450 MB.
    assert aks_memory_reserved_mi(4 * 1024, max_pods=70) == 1024 + 100
    assert [aks_cpu_reserved_m(n) for n in (1, 2, 4, 8, 16, 32, 64)] == [60, 100, 140, 180, 260, 420, 740]
    assert aks_cpu_reserved_m(36) == 460  # 140 + 10 a core past 4, as every row past 4 cores
    # Before 1.29: 25% of 4 + 20% of 4 + 10% of 8 GB = 2.6 GB of a 16 GB node, plus 750Mi eviction.
    assert aks_memory_reserved_mi(16 * 1024, version="1.28") == 2663 + 750
    assert aks_allocatable("Standard_D4ds_v5") == Capacity(3860, 16 * 1024 - 2250 - 100)


def test_a_taint_keeps_out_pods_that_do_not_tolerate_it() -> None:
    gpu = Pool("gpu", "x", Capacity(4000, 4096), taints=("sku=gpu:NoSchedule", SPOT))
    soft = Pool("soft", "x", Capacity(4000, 4096), taints=("team=a:PreferNoSchedule",))
    bare = Pod("p", "k", Capacity(1, 1))
    one = Pod("p", "k", Capacity(1, 1), tolerations=(Toleration("sku", "Equal", "gpu", "NoSchedule"),))
    both = Pod("p", "k", Capacity(1, 1), tolerations=(*one.tolerations, Toleration(None, "Exists")))
    assert not tolerates(bare, gpu) and not tolerates(one, gpu) and tolerates(both, gpu)
    assert tolerates(bare, soft)


def test_gpu_nodes_of_an_existing_cluster_get_tolerations_and_a_selector() -> None:
    gpu_nodes = {"taints": ["nvidia.com/gpu=present:NoSchedule"], "labels": {"node-role/gpu": "true"}}
    backends = {"ollama": {"enabled": True, "device": "gpu", "resources": {"cpu": "1", "memory": "4Gi"}}}
    rec = run_stack(
        "local", {"cluster": {"context": "kind-slm", "gpuNodes": gpu_nodes}, "backends": backends}, ("storage",)
    )
    spec = rec.one("kubernetes:apps/v1:Deployment", "ollama").plain["spec"]["template"]["spec"]
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert spec["nodeSelector"] == {"node-role/gpu": "true"}

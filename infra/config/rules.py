"""Rules that span keys, each declaring the top-level keys it reads so it can be skipped when they failed."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from pydantic.alias_generators import to_camel

from infra import stack_placement
from infra.config.base import NAMESPACE
from infra.config.errors import Problem
from infra.config.settings import AZURE_TARGETS, StackSettings
from infra.placement import (
    Capacity,
    Pod,
    Pool,
    cpu_text,
    eligible,
    largest,
    memory_text,
    placement,
    shortfalls,
    total,
    vm_facts,
)
from infra.vm_sizes import GPU_SIZES

Check = Callable[[StackSettings, set[str]], Iterator[Problem]]

_K = f"{NAMESPACE}:"


@dataclass(frozen=True)
class _Rule:
    # StackSettings fields the rule looks at: when one failed to parse it holds a default, and the
    # rule's verdict would be about that default rather than what the stack file says.
    reads: frozenset[str]
    check: Check


_RULES: list[_Rule] = []


def _rule(*reads: str) -> Callable[[Check], Check]:
    unknown = set(reads) - set(StackSettings.model_fields)
    if unknown:
        raise ValueError(f"rule reads unknown fields: {sorted(unknown)}")

    def register(check: Check) -> Check:
        _RULES.append(_Rule(frozenset(reads), check))
        return check

    return register


def required_secrets(target: str) -> set[str]:
    """Secrets a target cannot deploy without (Azure targets keep the HF token in Key Vault)."""
    return {"hfToken"} if target in AZURE_TARGETS else set()


def cross_check(s: StackSettings, present_secrets: set[str]) -> list[Problem]:
    """Every rule that spans keys, on settings that parsed."""
    return checked(s, present_secrets, failed=())


def checked(s: StackSettings, present_secrets: set[str], failed: Collection[str]) -> list[Problem]:
    """The rules that read none of the `failed` fields (those hold defaults, not what was written)."""
    return [p for rule in _RULES if not rule.reads.intersection(failed) for p in rule.check(s, present_secrets)]


# --- the rules, in the order their problems are listed ------------------------------------------


@_rule("target", "owner")
def _owner(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.is_azure and not s.owner.strip():
        yield Problem(f"{_K}owner", "required for Azure targets (becomes the 'owner' tag)")


@_rule("environment", "expires_on")
def _expiry(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.environment == "test" and s.expires_on is None:
        yield Problem(f"{_K}expiresOn", "required when environment is 'test' (YYYY-MM-DD)")


@_rule("target")
def _secrets(s: StackSettings, present_secrets: set[str]) -> Iterator[Problem]:
    for key in sorted(required_secrets(s.target) - present_secrets):
        yield Problem(
            f"{_K}{key}",
            f"required secret is not set for target {s.target}; run `pulumi config set --secret {key} <value>`",
        )


@_rule("allowed_cidrs")
def _whole_internet(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    for i, cidr in enumerate(s.allowed_cidrs):
        if cidr.prefixlen == 0:
            yield Problem(f"{_K}allowedCidrs[{i}]", f"{cidr} admits the whole internet; list your networks")


@_rule("target", "allowed_cidrs")
def _vm_sources(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.target == "vm" and not s.allowed_cidrs:
        yield Problem(
            f"{_K}allowedCidrs", "target vm needs at least one source CIDR, e.g. your public IP as a.b.c.d/32"
        )


@_rule("target", "network")
def _overlaps(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if not s.is_azure:
        return
    net = s.network
    key = f"{_K}network"
    for name, subnet in (("aksSubnet", net.aks_subnet), ("vmSubnet", net.vm_subnet)):
        if not subnet.subnet_of(net.address_space):
            yield Problem(f"{key}.{name}", f"{subnet} is not inside addressSpace {net.address_space}")
    ranges = {
        "aksSubnet": net.aks_subnet,
        "vmSubnet": net.vm_subnet,
        "serviceCidr": net.service_cidr,
        "podCidr": net.pod_cidr,
    }
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if ranges[a].overlaps(ranges[b]):
                yield Problem(f"{key}.{b}", f"{ranges[b]} overlaps {a} {ranges[a]}; pick disjoint CIDRs")
    for name in ("serviceCidr", "podCidr"):
        if ranges[name].overlaps(net.address_space):
            yield Problem(f"{key}.{name}", f"{ranges[name]} overlaps addressSpace {net.address_space}")
    if net.dns_service_ip not in net.service_cidr:
        yield Problem(f"{key}.dnsServiceIp", f"{net.dns_service_ip} is not inside serviceCidr {net.service_cidr}")


# Reads only whether a section is written, which holds even when the section failed to parse.
@_rule("target")
def _foreign_sections(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    """Sections set for a target that does not use them (a sign of a mistaken target or stack file)."""
    explicit = s.model_fields_set
    for section, target in (("aks", "aks"), ("vm", "vm"), ("cluster", "cluster")):
        if section in explicit and s.target != target:
            yield Problem(f"{_K}{section}", f"only used by target {target}; remove it or change target")
    for section in ("registry", "key_vault", "network"):
        if section in explicit and not s.is_azure:
            yield Problem(f"{_K}{to_camel(section)}", "only used by Azure targets (aks, vm); remove it")
    for section in ("storage", "addons"):
        if section in explicit and s.target == "vm":
            yield Problem(f"{_K}{section}", "only used by Kubernetes targets (aks, cluster); remove it")


@_rule("gateway")
def _tls(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    gw = s.gateway
    if gw.routing == "host" and gw.domain is None:
        yield Problem(f"{_K}gateway.routing", "host routing needs gateway.domain (backends get <name>.<domain>)")
    if gw.domain is not None and gw.acme_email is None:
        yield Problem(f"{_K}gateway.acmeEmail", f"required with gateway.domain {gw.domain!r} (ACME account)")
    if gw.acme_email is not None and gw.domain is None:
        yield Problem(f"{_K}gateway.acmeEmail", "set, but gateway.domain is not: the certificate is self-signed")


@_rule("target", "images")
def _remote_builds(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.images.build == "remote" and not s.is_azure:
        yield Problem(f"{_K}images.build", "remote builds use ACR Tasks (Azure targets); use local or none")


@_rule("monitoring")
def _smtp(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    mon = s.monitoring
    if any(r.email_to for r in mon.receivers) and (mon.smtp_smarthost is None or mon.smtp_from is None):
        yield Problem(f"{_K}monitoring.smtpSmarthost", "email receivers need smtpSmarthost and smtpFrom")


@_rule("target", "gateway")
def _gateway_address(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.gateway.address is not None and s.target != "cluster":
        yield Problem(f"{_K}gateway.address", f"only used by target cluster; {s.target} knows its own address")


@_rule("gateway")
def _internal_acme(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.gateway.internal_only and s.gateway.domain is not None:
        yield Problem(
            f"{_K}gateway.internalOnly", "an internal-only gateway cannot pass ACME's public HTTP-01 challenge"
        )


@_rule("backends")
def _route_prefixes(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    prefixes: dict[str, str] = {}
    for name, backend in s.backends.enabled().items():
        prefix = backend.route_prefix or name
        if prefix in prefixes or prefix == "ui":
            yield Problem(
                f"{_K}backends.{name}.routePrefix",
                f"{prefix!r} is already used by {prefixes.get(prefix, 'the web UI')}",
            )
        prefixes[prefix] = name


@_rule("web_ui", "backends")
def _web_ui(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.web_ui.enabled and not s.backends.enabled():
        yield Problem(f"{_K}webUi.enabled", "the web UI needs at least one enabled backend")


@_rule("backends")
def _conversion_device(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    onnx = s.backends.onnx
    if onnx.enabled and onnx.conversion_target.split("-")[0] != ("cuda" if onnx.device == "gpu" else "cpu"):
        yield Problem(
            f"{_K}backends.onnx.conversion.target",
            f"{onnx.conversion_target} does not run on device {onnx.device}; "
            f"use {'cuda-int4 or cuda-fp16' if onnx.device == 'gpu' else 'cpu-int4 or cpu-fp32'}",
        )


def _gpu_floor(name: str) -> float | None:
    """The oldest compute capability an engine's GPU build runs on (its registry entry)."""
    from infra.backends import registry  # noqa: PLC0415 (the registry imports this package)

    return registry.kind(name).min_compute_capability


def _gpu_backends(s: StackSettings) -> Iterator[tuple[str, str]]:
    for name, backend in s.backends.enabled().items():
        if backend.device == "gpu":
            yield name, f"{_K}backends.{name}.device"


@_rule("target", "backends", "aks")
def _aks_gpus(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.target != "aks":
        return
    pools = s.aks.gpu_pools
    for name, key in _gpu_backends(s):
        if not pools:
            yield Problem(key, "device gpu needs at least one entry in aks.gpuPools")
        elif (floor := _gpu_floor(name)) and not any(GPU_SIZES[p.vm_size].compute_capability >= floor for p in pools):
            yield Problem(
                key,
                f"{name} needs compute capability >= {floor}; no GPU pool size meets it "
                f"({', '.join(p.vm_size for p in pools)})",
            )


@_rule("target", "backends", "vm")
def _vm_gpu(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.target != "vm":
        return
    size = GPU_SIZES.get(s.vm.size)
    for name, key in _gpu_backends(s):
        if size is None:
            yield Problem(key, f"device gpu needs a GPU VM size; vm.size is {s.vm.size!r}")
        elif (floor := _gpu_floor(name)) and size.compute_capability < floor:
            yield Problem(
                key,
                f"{name} needs compute capability >= {floor}; "
                f"{s.vm.size} has {size.gpu_model} ({size.compute_capability})",
            )


# --- placement: every pod fits a node it may use (infra/placement.py has the formula) ----------


def _fit_key(pod: Pod, pool: Pool) -> str:
    """The key of the first request that does not fit: `.cpu`, `.memory`, or the pod's own key."""
    if pod.requests.cpu_m > pool.free.cpu_m:
        return f"{pod.key}.cpu"
    if pod.requests.memory_mi > pool.free.memory_mi:
        return f"{pod.key}.memory"
    if pod.gpus and pod.gpu_memory is not None and pod.gpus <= pool.gpus:
        return f"{pod.key.rsplit('.', 1)[0]}.{pod.gpu_memory.key}" if pod.gpu_memory.key else pod.key
    return pod.key


def _too_big(pod: Pod, candidates: list[Pool]) -> Problem:
    node = largest(candidates)
    need, free, allocatable = pod.requests, node.free, node.allocatable
    overheads = ", ".join(o.name for o in node.overheads) or "nothing else"
    return Problem(
        _fit_key(pod, node),
        f"{pod.name} requests {cpu_text(need.cpu_m)} CPUs and {memory_text(need.memory_mi)}"
        + (f" and {pod.gpus} GPU" if pod.gpus else "")
        + f"; the largest node it may use ({node.describe()}) allocates {cpu_text(allocatable.cpu_m)} CPUs and "
        f"{memory_text(allocatable.memory_mi)} after {node.reserved_by}, {cpu_text(free.cpu_m)} CPUs "
        f"({free.cpu_m}m) and {memory_text(free.memory_mi)} ({free.memory_mi}Mi) after its DaemonSets "
        f"({overheads}): {'; '.join(shortfalls(pod, node))}. Request at most {free.cpu_m}m and "
        f"{free.memory_mi}Mi, or add a pool that fits",
    )


def _placement_problems(s: StackSettings) -> Iterator[Problem]:
    pools = stack_placement.pools(s)
    if not pools:
        return
    replicated = stack_placement.pods(s)
    for item in replicated:
        pod = item.pod
        if s.target == "cluster" and pod.gpus:
            continue  # cluster.nodes sizes the CPU nodes; GPU nodes are the cluster's own
        candidates = eligible(pod, pools)
        if not candidates:
            described = "; ".join(f"{p.describe()} taints {list(p.taints)} labels {dict(p.labels)}" for p in pools)
            yield Problem(pod.key, f"{pod.name} tolerates the taints and selects the labels of no pool ({described})")
        elif placement(pod, candidates) is None:
            yield _too_big(pod, candidates)
    nodes = s.cluster.nodes
    if s.target == "cluster" and nodes is not None:
        yield from _shared_nodes(s, pools[0], nodes.count, replicated)


def _shared_nodes(
    s: StackSettings, pool: Pool, count: int, replicated: list[stack_placement.Replicated]
) -> Iterator[Problem]:
    """On a cluster of known nodes, the stack and its add-ons together fit all of them."""
    cpu_pods = [(r.pod, r.replicas) for r in replicated if not r.pod.gpus]
    addons = stack_placement.addon_pods(s)
    demand = total(
        [
            *(Capacity(p.requests.cpu_m * n, p.requests.memory_mi * n) for p, n in cpu_pods),
            *(a.requests for a in addons),
        ]
    )
    free = Capacity(pool.free.cpu_m * count, pool.free.memory_mi * count)
    if demand.cpu_m <= free.cpu_m and demand.memory_mi <= free.memory_mi:
        return
    parts = ", ".join(
        [
            f"{p.name} {cpu_text(p.requests.cpu_m)}/{memory_text(p.requests.memory_mi)}" + (f" x{n}" if n > 1 else "")
            for p, n in cpu_pods
        ]
        + [f"{a.name} {cpu_text(a.requests.cpu_m)}/{memory_text(a.requests.memory_mi)}" for a in addons]
    )
    biggest = max(cpu_pods, key=lambda pn: pn[0].requests.memory_mi * pn[1])[0] if cpu_pods else None
    key = f"{biggest.key}.memory" if biggest and demand.memory_mi > free.memory_mi else f"{_K}cluster.nodes"
    yield Problem(
        key,
        f"the stack and its add-ons request {cpu_text(demand.cpu_m)} CPUs and {memory_text(demand.memory_mi)} "
        f"({parts}); {count} node(s) of {pool.size} leave {cpu_text(free.cpu_m)} CPUs and "
        f"{memory_text(free.memory_mi)} ({free.memory_mi}Mi) after {pool.reserved_by} and "
        f"{', '.join(o.name for o in pool.overheads) or 'no DaemonSets'}: lower the requests, disable a "
        "backend or an add-on, or give cluster.nodes more",
    )


def _vm_problems(s: StackSettings) -> Iterator[Problem]:
    facts = vm_facts(s.vm.size)
    services = stack_placement.vm_services(s)
    memory = facts.memory_gib * 1024 - stack_placement.VM_HOST_MEMORY_MIB
    for svc in services:
        if svc.limits.cpu_m > facts.vcpus * 1000:
            yield Problem(
                f"{svc.key}.cpu",
                f"{svc.name} is limited to {cpu_text(svc.limits.cpu_m)} CPUs; {s.vm.size} has {facts.vcpus} "
                f"(Docker refuses more): at most {facts.vcpus}",
            )
    # Servers keep their models loaded; a one-shot step runs beside them (its own server waits).
    servers = [svc for svc in services if not svc.one_shot]
    steps = [svc for svc in services if svc.one_shot]
    step = max(steps, key=lambda svc: svc.limits.memory_mi, default=None)
    holding: list[stack_placement.Service] = [*servers, *([step] if step is not None else [])]
    held = sum(svc.limits.memory_mi for svc in holding)
    if holding and held > memory:
        parts = ", ".join(f"{svc.name} {memory_text(svc.limits.memory_mi)}" for svc in holding)
        largest_one = max(holding, key=lambda svc: svc.limits.memory_mi)
        yield Problem(
            f"{largest_one.key}.memory",
            f"the VM's services may hold {memory_text(held)} ({parts}); {s.vm.size} has {facts.memory_gib}Gi, "
            f"{memory_text(memory)} ({memory}Mi) after {memory_text(stack_placement.VM_HOST_MEMORY_MIB)} for the OS, "
            "Docker and the unlimited services: lower the memory limits so they sum to at most that",
        )
    gpu_services = [svc for svc in servers if svc.gpu]
    claims = [(svc, svc.gpu_memory.on(facts.gpu_memory_gib)) for svc in gpu_services if svc.gpu_memory is not None]
    used = sum(g for _, g in claims)
    if facts.gpus and claims and used > facts.gpu_memory_gib:
        svc = max(claims, key=lambda c: c[1])[0]
        assert svc.gpu_memory is not None
        key = f"{svc.key.rsplit('.', 1)[0]}.{svc.gpu_memory.key}" if svc.gpu_memory.key else svc.key
        parts = ", ".join(f"{c.name} {g:.1f}GiB ({c.gpu_memory.basis if c.gpu_memory else ''})" for c, g in claims)
        yield Problem(
            key,
            f"the GPU backends share one {facts.gpu_memory_gib}GiB GPU on {s.vm.size} and hold {used:.1f}GiB "
            f"({parts}): lower them by {used - facts.gpu_memory_gib:.1f}GiB",
        )


@_rule("target", "backends", "aks", "vm", "cluster", "addons", "monitoring", "web_ui")
def _placement(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    if s.target == "vm":
        yield from _vm_problems(s)
    else:
        yield from _placement_problems(s)


# --- replica ranges (autoscaling) ---------------------------------------------------------------


@_rule("target", "backends", "aks")
def _replica_ranges(s: StackSettings, _: set[str]) -> Iterator[Problem]:
    """Where a backend's replica range can be honoured. The VM runs one replica of each backend
    (Compose has no autoscaler). At minReplicas 0 on AKS, the first request after idle gets the
    gateway's 503 and wakes KEDA; that only pays when the pool under it can give its node back."""
    for name, backend in s.backends.enabled().items():
        key = f"{_K}backends.{name}.scaling"
        if s.target == "vm":
            if "scaling" in backend.model_fields_set:
                yield Problem(key, "target vm runs one replica of each backend, fixed (no autoscaler); remove it")
            continue
        if s.target != "aks" or backend.scaling.min_replicas != 0:
            continue
        if backend.device == "cpu":
            yield Problem(
                f"{key}.minReplicas",
                "0 needs a pool that scales to zero, and CPU backends run on the system pool (minCount >= 1); "
                "use 1 or more, or device gpu on a GPU pool with minCount 0",
            )
        elif not any(pool.min_count == 0 for pool in s.aks.gpu_pools):
            yield Problem(
                f"{key}.minReplicas",
                "0 needs a GPU pool that scales to zero; no entry of aks.gpuPools has minCount 0: use 1 or more",
            )

"""Rules that span keys, each declaring the top-level keys it reads so it can be skipped when they failed."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

from pydantic.alias_generators import to_camel

from infra.config.base import NAMESPACE
from infra.config.errors import Problem
from infra.config.settings import AZURE_TARGETS, StackSettings
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

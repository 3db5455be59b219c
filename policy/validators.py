"""What must never ship, as plain functions over a resource's type, name, inputs and options.

`policy/__main__.py` wraps them in a Pulumi PolicyPack (mandatory). Inputs are what the policy SDK
hands a policy: camelCase keys, secrets already unwrapped to their plain values (pulumi-policy
deserializes with `proxy_secrets` off), and, in a preview, values not known yet replaced by
`UNKNOWN` (the pack converts the SDK's sentinels). So no rule can ask whether a value was marked
secret; the secret rules judge where a value goes instead. tests/test_policy.py runs them through
the SDK (policy/engine.py) on every stack and on crafted violations."""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

REQUIRED_TAGS = ("env", "owner", "project", "stack", "managed-by")
# Azure types that take no tags (sub-resources and assignments).
UNTAGGABLE = {
    "azure-native:network:Subnet",
    "azure-native:authorization:RoleAssignment",
    "azure-native:containerservice:MaintenanceConfiguration",
}
# What holds data or identity: protected in prod so a mistaken destroy cannot remove it.
PROTECTED_IN_PROD = {
    "azure-native:resources:ResourceGroup",
    "azure-native:containerservice:ManagedCluster",
    "azure-native:containerregistry:Registry",
    "azure-native:keyvault:Vault",
    "azure-native:operationalinsights:Workspace",
    "azure-native:compute:Disk",
    "azure-native:network:PublicIPAddress",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}
# Containers allowed to run as root, by image repository, each with the reason. Empty: ours all run
# as a non-root uid (the VM's Compose file is not a Kubernetes object and is checked by tests).
ROOT_ALLOWED: dict[str, str] = {}
# Routes that may be public without the gateway's API key, with the reason.
UNAUTHENTICATED_ROUTES = {
    "open-webui": "Open WebUI signs its users in itself (WEBUI_AUTH)",
    "https-redirect": "only redirects plain HTTP to HTTPS",
}
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_?KEY|CREDENTIAL)", re.IGNORECASE)
# Helm value keys that hold a credential itself (as opposed to naming a Secret that holds it).
CREDENTIAL_KEYS = {
    "password",
    "adminpassword",
    "token",
    "bearertoken",
    "apikey",
    "api_key",
    "secretkey",
    "secret_key",
    "clientsecret",
    "client_secret",
    "accesskey",
    "privatekey",
    "webhookurl",
    "webhook_url",
}
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_GPU_SIZE = re.compile(r"^Standard_N", re.IGNORECASE)


class _Unknown:
    """A value a preview does not know yet (computed by a provider): judged on `up`, not now."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class ChartExemption:
    """What a chart's own workload may do that ours may not, and why."""

    workload: str  # a substring of the child object's name
    allows: frozenset[str]  # findings of containers-unprivileged: host-namespaces, root, escalation
    reason: str


# Children a real helm.v4.Chart registers are checked like our own resources, except for these.
# Keyed by the chart's resource name suffix (the program names charts `<prefix>-<chart>`).
CHART_EXEMPTIONS: dict[str, tuple[ChartExemption, ...]] = {
    "kube-prometheus-stack": (
        ChartExemption(
            "node-exporter",
            frozenset({"host-namespaces"}),
            "node exporter reports the node itself: it needs the host's network and PID namespaces",
        ),
    ),
    "dcgm-exporter": (
        ChartExemption(
            "dcgm-exporter",
            frozenset({"root", "escalation"}),
            "DCGM reads GPU counters through the NVIDIA driver, which needs root and SYS_ADMIN",
        ),
    ),
    "device-plugin": (
        ChartExemption(
            "device-plugin",
            frozenset({"root"}),
            "the device plugin registers GPUs through the kubelet's root-owned device-plugin socket",
        ),
    ),
}


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False
    # The stack's environment; unset: the resource's own `env` tag.
    environment: str = ""
    # For a child of a helm.v4.Chart: the chart resource's name; empty for our own resources.
    chart: str = ""


def chart_exemptions(resource: Resource) -> frozenset[str]:
    """What containers-unprivileged lets this chart child do (nothing for our own resources)."""
    if not resource.chart:
        return frozenset()
    allowed: set[str] = set()
    for suffix, exemptions in CHART_EXEMPTIONS.items():
        if resource.chart == suffix or resource.chart.endswith(f"-{suffix}"):
            object_name = str(_mapping(resource.props.get("metadata")).get("name") or resource.name)
            allowed |= {a for e in exemptions if e.workload in object_name for a in e.allows}
    return frozenset(allowed)


def _kind(resource: Resource) -> str:
    return resource.type.rsplit(":", 1)[-1]


def _pod_spec(resource: Resource) -> Mapping[str, Any] | None:
    if not resource.type.startswith("kubernetes:") or _kind(resource) not in WORKLOAD_KINDS:
        return None
    spec = resource.props.get("spec") or {}
    if _kind(resource) == "Pod":
        return spec
    if _kind(resource) == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def _containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers"):
        yield from pod.get(key) or []


# --- images --------------------------------------------------------------------------------------


def image_is_pinned(image: str) -> bool:
    """A release tag or a digest; never `latest` and never no tag at all."""
    if _DIGEST.search(image):
        return True
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return False
    tag = name.rsplit(":", 1)[1]
    return bool(tag) and tag != "latest"


def pinned_images(resource: Resource) -> list[str]:
    violations: list[str] = []
    pod = _pod_spec(resource)
    if pod is not None:
        for container in _containers(pod):
            image = container.get("image")
            if isinstance(image, str) and not image_is_pinned(image):
                violations.append(
                    f"container {container.get('name')!r} uses image {image!r} without a pinned tag or digest"
                )
    if resource.type == "kubernetes:helm.sh/v4:Chart" and not resource.props.get("version"):
        violations.append(f"chart {resource.props.get('chart')!r} has no pinned version")
    return violations


# --- GPU pools -----------------------------------------------------------------------------------


def gpu_pool_is_tainted_and_bounded(resource: Resource) -> list[str]:
    if resource.type != "azure-native:containerservice:AgentPool":
        return []
    props = resource.props
    if not _GPU_SIZE.match(str(props.get("vmSize", ""))):
        return []
    violations: list[str] = []
    if not props.get("nodeTaints"):
        violations.append(f"GPU pool {resource.name} has no taint: any pod could land on its GPU nodes")
    if props.get("enableAutoScaling") is not True:
        violations.append(f"GPU pool {resource.name} is not autoscaled")
    low, high = props.get("minCount"), props.get("maxCount")
    if low is None or high is None:
        violations.append(f"GPU pool {resource.name} needs minCount and maxCount")
    elif low > high:
        violations.append(f"GPU pool {resource.name}: minCount {low} > maxCount {high}")
    return violations


# --- containers ----------------------------------------------------------------------------------


def containers_are_unprivileged(resource: Resource, root_allowed: Mapping[str, str] = ROOT_ALLOWED) -> list[str]:
    pod = _pod_spec(resource)
    if pod is None:
        return []
    allowed = chart_exemptions(resource)
    violations: list[str] = []
    pod_context = _mapping(pod.get("securityContext"))
    shared = [key for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key) is True]
    if shared and "host-namespaces" not in allowed:
        violations.append(f"{resource.name} shares the host's namespaces ({', '.join(shared)})")
    for container in _containers(pod):
        name = container.get("name")
        context = _mapping(container.get("securityContext"))
        if context.get("privileged") is True and "privileged" not in allowed:
            violations.append(f"container {name!r} runs privileged")
        escalation = context.get("allowPrivilegeEscalation")
        if escalation is not False and escalation is not UNKNOWN and "escalation" not in allowed:
            violations.append(f"container {name!r} does not set allowPrivilegeEscalation: false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        uid = context.get("runAsUser", pod_context.get("runAsUser"))
        if UNKNOWN in (non_root, uid) or "root" in allowed:
            continue
        repository = str(container.get("image", "")).rsplit(":", 1)[0]
        if (non_root is not True or uid == 0) and repository not in root_allowed:
            violations.append(f"container {name!r} may run as root and {repository!r} is not on the allow-list")
    return violations


# --- secrets -------------------------------------------------------------------------------------
#
# The SDK hands policies plain values, so a rule cannot tell a Pulumi secret from a literal. It can
# tell where a value goes: a Kubernetes Secret's data and a Key Vault secret's value are where
# secrets belong (encrypted at rest, never logged). An env literal, a ConfigMap, Helm values (which
# Helm stores in plain text) and a VM's custom data (readable by anything on the VM and in the
# portal) are not: a credential there is a violation, judged by its key (`API_KEY: x`), by its form
# (a Hugging Face token, a PEM private key, a chat webhook URL) or, across the stack, because it is
# the value of one of the stack's own secrets.

SECRET_HOMES = {"kubernetes:core/v1:Secret", "azure-native:keyvault:Secret"}
# Well-known credential forms, whatever their key is called.
_CREDENTIAL_FORMS = re.compile(
    r"hf_[A-Za-z0-9]{30,}"
    r"|sk-(?:proj-)?[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|https://hooks\.slack\.com/services/\S+"
    r"|https://discord(?:app)?\.com/api/webhooks/\S+"
    r"|https://[\w.-]+\.webhook\.office\.com/\S+"
)
# `KEY=value` / `key: value` lines in embedded files (Compose, env files, cloud-config).
_ASSIGNMENT = re.compile(
    r"^[ \t]*-?[ \t]*['\"]?([A-Za-z0-9_.-]+)['\"]?[ \t]*[:=][ \t]*['\"]?([^'\"\s#]+)", re.MULTILINE
)
# What a credential-named key may hold: a reference, a path or nothing, never the secret.
_REFERENCE = re.compile(r"^(\$|/|\{\{|<|\(known after apply\)$|null$|none$|true$|false$|\||>)", re.IGNORECASE)
# What a literal credential looks like in free text: one token-shaped word (a command, a pattern or
# an expansion is not one).
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_+/=.~-]{8,}")
# Shortest secret value the stack-wide check compares (shorter ones match by accident).
MIN_SECRET_LENGTH = 12


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    else:
        yield path, value


def _credential_key(key: str) -> bool:
    key = key.lower()
    # *_PATH and *_FILE name where a secret file is, never the secret.
    return (key in CREDENTIAL_KEYS or bool(_SECRET_NAME.search(key))) and not key.endswith(
        ("_path", "_file", "path", "file", "ref", "secretname", "existingsecret", "secretref", "keyref")
    )


def credentials_in_text(text: str) -> list[str]:
    """Credentials in free text (an embedded file): well-known forms, and credential-named
    assignments whose value is a literal rather than a reference or a path."""
    found = [f"a credential of the form {m.group(0)[:6]}..." for m in _CREDENTIAL_FORMS.finditer(text)]
    for match in _ASSIGNMENT.finditer(text):
        key, value = match.group(1), match.group(2)
        if _credential_key(key) and _TOKEN_LIKE.fullmatch(value) and not _REFERENCE.match(value):
            found.append(f"{key} set to a literal")
    return found


def _env_literals(resource: Resource) -> Iterator[str]:
    pod = _pod_spec(resource)
    for container in _containers(pod or {}):
        for env in container.get("env") or []:
            name = str(env.get("name", ""))
            value = env.get("value")
            if not isinstance(value, str) or not value:
                continue
            where = f"container {container.get('name')!r} sets {name}"
            if _credential_key(name):
                yield f"{where} as a literal env value (use valueFrom.secretKeyRef)"
            elif _CREDENTIAL_FORMS.search(value):
                yield f"{where} to a literal that is a credential (use valueFrom.secretKeyRef)"


def _config_map(resource: Resource) -> Iterator[str]:
    for key in ("data", "binaryData"):
        for entry, value in _mapping(resource.props.get(key)).items():
            if not isinstance(value, str):
                continue
            if _credential_key(str(entry)) and value and not _REFERENCE.match(value):
                yield f"ConfigMap {resource.name}: {key}.{entry} holds a credential (use a Secret)"
            for finding in credentials_in_text(value):
                yield f"ConfigMap {resource.name}: {key}.{entry} holds {finding} (use a Secret)"


def _helm_credentials(resource: Resource) -> Iterator[str]:
    chart = resource.props.get("chart")
    for path, value in _walk(resource.props.get("values") or {}, "values"):
        if not isinstance(value, str) or not value:
            continue
        leaf = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1]).lower()
        if leaf in CREDENTIAL_KEYS:
            yield f"chart {chart!r}: {path} holds a literal credential (Helm stores values in plain text)"
        elif _CREDENTIAL_FORMS.search(value) or (("\n" in value) and credentials_in_text(value)):
            yield f"chart {chart!r}: {path} holds a credential (Helm stores values in plain text)"


def custom_data(resource: Resource) -> list[tuple[str, str]]:
    """A VM's custom data (cloud-init, base64 and maybe gzip), as (part, text): the cloud-config
    itself and every file it writes; empty for anything else."""
    if resource.type != "azure-native:compute:VirtualMachine":
        return []
    encoded = _mapping(resource.props.get("osProfile")).get("customData")
    if not isinstance(encoded, str) or not encoded:
        return []
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raw = encoded.encode()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", "replace")
    parts = [("custom data", text)]
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return parts
    for entry in _mapping(document).get("write_files") or []:
        content = _mapping(entry).get("content")
        if isinstance(content, str):
            parts.append((f"custom data file {_mapping(entry).get('path')}", content))
    return parts


def no_plain_secrets(resource: Resource) -> list[str]:
    violations = list(_env_literals(resource))
    if resource.type == "kubernetes:core/v1:ConfigMap":
        violations += _config_map(resource)
    if resource.type == "kubernetes:helm.sh/v4:Chart":
        violations += _helm_credentials(resource)
    for part, text in custom_data(resource)[1:] or custom_data(resource):
        violations += [f"VM {resource.name}: {part} holds {finding}" for finding in credentials_in_text(text)]
    return violations


def _secret_values(resource: Resource) -> Iterator[str]:
    """The values a secret home holds (a Kubernetes Secret's data decoded)."""
    if resource.type == "kubernetes:core/v1:Secret":
        for _, value in _walk(resource.props.get("stringData") or {}):
            if isinstance(value, str):
                yield value
        for _, value in _walk(resource.props.get("data") or {}):
            if isinstance(value, str):
                try:
                    yield base64.b64decode(value, validate=True).decode()
                except ValueError:
                    yield value
    elif resource.type == "azure-native:keyvault:Secret":
        value = _mapping(resource.props.get("properties")).get("value")
        if isinstance(value, str):
            yield value


def _sinks(resource: Resource) -> Iterator[tuple[str, str]]:
    """Where a secret must not go, as (where, text)."""
    pod = _pod_spec(resource)
    for container in _containers(pod or {}):
        for env in container.get("env") or []:
            if isinstance(env.get("value"), str):
                yield f"env {env.get('name')} of container {container.get('name')!r}", env["value"]
    if resource.type == "kubernetes:core/v1:ConfigMap":
        for entry, value in _mapping(resource.props.get("data")).items():
            if isinstance(value, str):
                yield f"ConfigMap data {entry}", value
    if resource.type == "kubernetes:helm.sh/v4:Chart":
        for path, value in _walk(resource.props.get("values") or {}, "values"):
            if isinstance(value, str):
                yield f"Helm {path}", value
    yield from custom_data(resource)


def secrets_stay_in_secret_stores(resources: Sequence[Resource]) -> list[str]:
    """No value held by one of the stack's Secrets or Key Vault secrets appears in an env literal,
    a ConfigMap, Helm values or a VM's custom data."""
    values = {v for r in resources if r.type in SECRET_HOMES for v in _secret_values(r) if len(v) >= MIN_SECRET_LENGTH}
    violations: list[str] = []
    for resource in resources:
        for where, text in _sinks(resource):
            if any(value in text for value in values):
                violations.append(f"{resource.name}: {where} holds the value of one of the stack's secrets")
    return violations


# --- tags and protection -------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def required_tags(resource: Resource) -> list[str]:
    if not resource.type.startswith("azure-native:") or resource.type in UNTAGGABLE:
        return []
    tags = _mapping(resource.props.get("tags"))
    missing = [tag for tag in REQUIRED_TAGS if not tags.get(tag)]
    return [f"{resource.type} {resource.name} lacks tags: {', '.join(missing)}"] if missing else []


def prod_data_is_protected(resource: Resource) -> list[str]:
    environment = resource.environment or _mapping(resource.props.get("tags")).get("env", "")
    if environment != "prod" or resource.type not in PROTECTED_IN_PROD or resource.protect:
        return []
    return [f"{resource.type} {resource.name} holds data or identity in prod and is not protected"]


# --- the stack as a whole ------------------------------------------------------------------------


def public_endpoints_are_authenticated(resources: Sequence[Resource]) -> list[str]:
    """Every route on the gateway is covered by an API-key SecurityPolicy (or on the allow-list), and
    nothing else is published: no LoadBalancer or NodePort Service of our own."""
    routes = {
        str((r.props.get("metadata") or {}).get("name"))
        for r in resources
        if r.type == "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
    }
    covered: set[str] = set()
    for policy in resources:
        if policy.type != "kubernetes:gateway.envoyproxy.io/v1alpha1:SecurityPolicy":
            continue
        spec = policy.props.get("spec") or {}
        auth = spec.get("apiKeyAuth") or {}
        if auth.get("credentialRefs") and auth.get("extractFrom"):
            covered |= {str(t.get("name")) for t in spec.get("targetRefs") or [] if t.get("kind") == "HTTPRoute"}
    violations = [
        f"HTTPRoute {route} is reachable without an API key"
        for route in sorted(routes - covered - set(UNAUTHENTICATED_ROUTES))
    ]
    for r in resources:
        if r.type == "kubernetes:core/v1:Service":
            kind = (r.props.get("spec") or {}).get("type", "ClusterIP")
            if kind in {"LoadBalancer", "NodePort"}:
                violations.append(f"Service {r.name} is published as {kind}; expose it through the gateway")
    return violations


RESOURCE_VALIDATORS: dict[str, tuple[str, Callable[[Resource], list[str]]]] = {
    "images-pinned": ("Images and charts are pinned by tag or digest, never latest", pinned_images),
    "gpu-pools-tainted-and-bounded": (
        "GPU node pools are tainted and autoscaled within bounds",
        gpu_pool_is_tainted_and_bounded,
    ),
    "containers-unprivileged": (
        "Containers are not privileged and do not run as root unless allow-listed",
        containers_are_unprivileged,
    ),
    "no-plain-secrets": (
        "Credentials are never env literals, ConfigMap data, Helm values or VM custom data",
        no_plain_secrets,
    ),
    "required-tags": (f"Azure resources carry the tags {', '.join(REQUIRED_TAGS)}", required_tags),
    "prod-data-protected": ("Prod resources holding data or identity are protected", prod_data_is_protected),
}
STACK_VALIDATORS: dict[str, tuple[str, Callable[[Sequence[Resource]], list[str]]]] = {
    "public-endpoints-authenticated": (
        "Every public route requires an API key; nothing else is published",
        public_endpoints_are_authenticated,
    ),
    "secrets-stay-in-secret-stores": (
        "A secret's value appears only in a Kubernetes Secret or Key Vault secret",
        secrets_stay_in_secret_stores,
    ),
}

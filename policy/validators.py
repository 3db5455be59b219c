"""What must never ship, as plain functions over a resource's type, name, inputs and options.

`policy/__main__.py` wraps them in a Pulumi PolicyPack (mandatory); tests run them on the offline
render of every stack and on crafted violations. Inputs are the engine's view: camelCase keys, secret
values wrapped in an object whose class is named `Secret` (the policy SDK's and the recording's)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    props: Mapping[str, Any]
    protect: bool = False
    # The stack's environment; unset: the resource's own `env` tag.
    environment: str = ""


def is_secret(value: object) -> bool:
    return type(value).__name__ == "Secret"


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
    violations: list[str] = []
    pod_context = pod.get("securityContext") or {}
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        violations.append(f"{resource.name} shares the host's network, PID or IPC namespace")
    for container in _containers(pod):
        name = container.get("name")
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            violations.append(f"container {name!r} runs privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            violations.append(f"container {name!r} does not set allowPrivilegeEscalation: false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        uid = context.get("runAsUser", pod_context.get("runAsUser"))
        repository = str(container.get("image", "")).rsplit(":", 1)[0]
        if (non_root is not True or uid == 0) and repository not in root_allowed:
            violations.append(f"container {name!r} may run as root and {repository!r} is not on the allow-list")
    return violations


# --- secrets -------------------------------------------------------------------------------------


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    else:
        yield path, value


def _env_literals(resource: Resource) -> Iterator[str]:
    pod = _pod_spec(resource)
    for container in _containers(pod or {}):
        for env in container.get("env") or []:
            name = str(env.get("name", ""))
            # *_PATH and *_FILE name where a secret file is, never the secret.
            if _SECRET_NAME.search(name) and env.get("value") and not name.endswith(("_PATH", "_FILE")):
                yield f"container {container.get('name')!r} sets {name} as a literal env value"


def _plain_secret_data(resource: Resource) -> Iterator[str]:
    for key in ("stringData", "data"):
        payload = resource.props.get(key)
        if not payload or is_secret(payload):
            continue
        for path, value in _walk(payload, key):
            if value not in (None, "") and not is_secret(value):
                yield f"Secret {resource.name}: {path} is a plain value in the program's inputs"


def _helm_credentials(resource: Resource) -> Iterator[str]:
    chart = resource.props.get("chart")
    for path, value in _walk(resource.props.get("values") or {}, "values"):
        leaf = re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1]).lower()
        if leaf in CREDENTIAL_KEYS and isinstance(value, str) and value:
            yield f"chart {chart!r}: {path} holds a literal credential"
        if is_secret(value):
            yield f"chart {chart!r}: {path} is a secret in Helm values (Helm stores values in plain text)"


def no_plain_secrets(resource: Resource) -> list[str]:
    violations = list(_env_literals(resource))
    if resource.type == "kubernetes:core/v1:Secret":
        violations += _plain_secret_data(resource)
    if resource.type == "kubernetes:helm.sh/v4:Chart":
        violations += _helm_credentials(resource)
    if resource.type == "azure-native:keyvault:Secret":
        value = (resource.props.get("properties") or {}).get("value")
        if value is not None and not is_secret(value):
            violations.append(f"Key Vault secret {resource.name}: its value is not a Pulumi secret")
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
    "no-plain-secrets": ("Secrets are never plain inputs, env literals or Helm values", no_plain_secrets),
    "required-tags": (f"Azure resources carry the tags {', '.join(REQUIRED_TAGS)}", required_tags),
    "prod-data-protected": ("Prod resources holding data or identity are protected", prod_data_is_protected),
}
STACK_VALIDATORS: dict[str, tuple[str, Callable[[Sequence[Resource]], list[str]]]] = {
    "public-endpoints-authenticated": (
        "Every public route requires an API key; nothing else is published",
        public_endpoints_are_authenticated,
    ),
}


def check_all(resources: Iterable[Resource]) -> dict[str, list[str]]:
    """Every policy's violations over a whole stack (what tests and the render use)."""
    items = list(resources)
    found: dict[str, list[str]] = {}
    for name, (_, validate) in RESOURCE_VALIDATORS.items():
        found[name] = [v for r in items for v in validate(r)]
    for name, (_, validate_stack) in STACK_VALIDATORS.items():
        found[name] = validate_stack(items)
    return found

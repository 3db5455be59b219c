"""The policy pack's validators (policy/validators.py): every stack's offline render passes them all,
and each crafted violation is caught by the rule meant for it. The module that builds the PolicyPack
(policy/__main__.py) needs the policy SDK's own environment and is never imported here."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from offline import recording
from offline.recording import PROJECT_ROOT
from policy import validators
from policy.validators import Resource, check_all
from tests.conftest import STACKS, run_stack


def resources_of(rec: recording.Recording) -> list[Resource]:
    """The engine's view: custom resources and charts, inputs with secrets still wrapped."""
    return [
        Resource(r.type, r.name, r.inputs, r.protect)
        for r in rec.resources
        if r.custom or r.type == "kubernetes:helm.sh/v4:Chart"
    ]


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_every_policy(stack: str, rendered: Any) -> None:
    found = check_all(resources_of(rendered(stack)))
    assert set(found) == set(validators.RESOURCE_VALIDATORS) | set(validators.STACK_VALIDATORS)
    assert {name: v for name, v in found.items() if v} == {}


def test_variants_pass_too() -> None:
    rec = run_stack(
        "prod",
        overrides={
            "webUi": {"enabled": True},
            "gateway": {"domain": "llm.example.com", "acmeEmail": "ops@example.com"},
            "monitoring": {"receivers": [{"name": "oncall", "webhookUrl": "https://hooks.example.com/x"}]},
        },
    )
    assert {name: v for name, v in check_all(resources_of(rec)).items() if v} == {}


def _find(rec: recording.Recording, type_: str, name: str = "") -> Resource:
    match = next(r for r in rec.resources if r.type == type_ and name in r.name)
    return Resource(match.type, match.name, copy.deepcopy(recording.unwrap(match.inputs)), match.protect)


def _with(resource: Resource, change: Callable[[dict[str, Any]], None], **fields: Any) -> Resource:
    props = copy.deepcopy(dict(resource.props))
    change(props)
    return Resource(fields.get("type", resource.type), resource.name, props, fields.get("protect", resource.protect))


def _container(props: dict[str, Any]) -> dict[str, Any]:
    return props["spec"]["template"]["spec"]["containers"][0]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(props: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node: Any = props
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[leaf] = value

    return change


def test_unpinned_images_and_charts_are_caught(rendered: Any) -> None:
    deployment = _find(rendered("local"), "kubernetes:apps/v1:Deployment", "ollama")
    for image in ("ollama/ollama", "ollama/ollama:latest", "registry.local:5000/ollama"):
        bad = _with(deployment, lambda p, i=image: _container(p).__setitem__("image", i))
        assert validators.pinned_images(bad), image
    for image in ("ollama/ollama:0.13.5", "registry.local:5000/x/y:abc123", f"x/y@sha256:{'a' * 64}"):
        assert validators.image_is_pinned(image), image
    chart = _find(rendered("local"), "kubernetes:helm.sh/v4:Chart", "keda")
    assert validators.pinned_images(_with(chart, lambda p: p.pop("version")))


def test_gpu_pool_without_taint_or_bounds_is_caught(rendered: Any) -> None:
    pool = _find(rendered("prod"), "azure-native:containerservice:AgentPool", "a10")
    assert validators.gpu_pool_is_tainted_and_bounded(pool) == []
    assert "no taint" in validators.gpu_pool_is_tainted_and_bounded(_with(pool, _set("nodeTaints", [])))[0]
    assert validators.gpu_pool_is_tainted_and_bounded(_with(pool, _set("enableAutoScaling", False)))
    assert validators.gpu_pool_is_tainted_and_bounded(_with(pool, lambda p: p.pop("maxCount")))


def test_privileged_or_root_containers_are_caught(rendered: Any) -> None:
    deployment = _find(rendered("local"), "kubernetes:apps/v1:Deployment", "onnx")
    privileged = _with(deployment, lambda p: _container(p)["securityContext"].__setitem__("privileged", True))
    assert any("privileged" in v for v in validators.containers_are_unprivileged(privileged))

    def as_root(props: dict[str, Any]) -> None:
        props["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
        _container(props)["securityContext"].pop("runAsNonRoot")

    root = _with(deployment, as_root)
    assert any("root" in v for v in validators.containers_are_unprivileged(root))
    image = _container(dict(root.props))["image"].rsplit(":", 1)[0]
    assert validators.containers_are_unprivileged(root, root_allowed={image: "documented exception"}) == []


def test_public_route_without_an_api_key_is_caught(rendered: Any) -> None:
    resources = resources_of(rendered("local"))
    route = next(r for r in resources if r.type.endswith(":HTTPRoute"))
    extra = _with(route, lambda p: p["metadata"].__setitem__("name", "debug"))
    violations = validators.public_endpoints_are_authenticated([*resources, extra])
    assert violations == ["HTTPRoute debug is reachable without an API key"]

    without_policy = [r for r in resources if not r.type.endswith(":SecurityPolicy")]
    assert len(validators.public_endpoints_are_authenticated(without_policy)) == 2

    service = next(r for r in resources if r.type == "kubernetes:core/v1:Service")
    exposed = _with(service, lambda p: p["spec"].__setitem__("type", "LoadBalancer"))
    assert "LoadBalancer" in validators.public_endpoints_are_authenticated([*resources, exposed])[0]


def test_plain_secrets_are_caught(rendered: Any) -> None:
    rec = rendered("local")
    deployment = _find(rec, "kubernetes:apps/v1:Deployment", "onnx")
    literal = _with(deployment, lambda p: _container(p).setdefault("env", []).append({"name": "API_KEY", "value": "k"}))
    assert "literal env value" in validators.no_plain_secrets(literal)[0]
    path_env = _with(
        deployment, lambda p: _container(p).setdefault("env", []).append({"name": "HF_TOKEN_PATH", "value": "/x"})
    )
    assert validators.no_plain_secrets(path_env) == []

    secret = _find(rec, "kubernetes:core/v1:Secret", "api-keys-gateway")  # unwrapped: the plain value
    assert "plain value" in validators.no_plain_secrets(secret)[0]

    chart = _find(rec, "kubernetes:helm.sh/v4:Chart", "kube-prometheus-stack")
    leaked = _with(chart, lambda p: p["values"]["grafana"].__setitem__("adminPassword", "hunter2"))
    assert "literal credential" in validators.no_plain_secrets(leaked)[0]


def test_missing_tags_and_unprotected_prod_data_are_caught(rendered: Any) -> None:
    vault = _find(rendered("prod"), "azure-native:keyvault:Vault")
    assert validators.required_tags(vault) == [] and validators.prod_data_is_protected(vault) == []
    untagged = _with(vault, lambda p: p["tags"].pop("owner"))
    assert "owner" in validators.required_tags(untagged)[0]
    assert validators.prod_data_is_protected(_with(vault, lambda p: None, protect=False))
    dev_vault = _find(rendered("dev"), "azure-native:keyvault:Vault")
    assert validators.prod_data_is_protected(_with(dev_vault, lambda p: None, protect=False)) == []


def test_the_pack_module_wires_every_validator_and_is_not_imported() -> None:
    source = (PROJECT_ROOT / "policy" / "__main__.py").read_text()
    assert "RESOURCE_VALIDATORS.items()" in source and "STACK_VALIDATORS.items()" in source
    assert "EnforcementLevel.MANDATORY" in source
    import sys

    assert "policy.__main__" not in sys.modules
    lock = (PROJECT_ROOT / "policy" / "requirements.txt").read_text()
    assert "pulumi-policy==1.21.0" in lock and "--hash=sha256:" in lock

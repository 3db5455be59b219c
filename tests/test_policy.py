"""The policy pack through the policy SDK, as `pulumi preview --policy-pack policy` runs it.

The pack (policy/__main__.py) is started with its own interpreter as the CLI starts it, and every
recorded registration goes to its analyzer over gRPC the way the engine sends it: secrets in the
engine's secret envelope, unknowns as the unknown sentinel in a preview (policy/engine.py). So the
rules see what pulumi-policy really hands them (secrets unwrapped, unknowns behind its proxy). The
only stand-in is the engine itself: the recording mock replaces it as the source of registrations.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from offline import recording
from offline.recording import PROJECT_ROOT, Registration
from policy import engine
from tests.conftest import STACKS, run_stack

pytestmark = pytest.mark.skipif(
    not engine.available(),
    reason=f"the policy pack's Python {engine.policy_python()} is missing (python3 scripts/test.py creates it)",
)

POLICIES = {
    "images-pinned",
    "gpu-pools-tainted-and-bounded",
    "containers-unprivileged",
    "no-plain-secrets",
    "required-tags",
    "prod-data-protected",
    "public-endpoints-authenticated",
    "secrets-stay-in-secret-stores",
}


@pytest.fixture(scope="module")
def pack() -> Iterator[engine.Pack]:
    with engine.running_pack() as running:
        yield running


def _one(rec: recording.Recording, type_: str, name: str = "") -> Registration:
    return next(r for r in rec.resources if r.type == type_ and name in r.name)


def _with(reg: Registration, change: Callable[[dict[str, Any]], None], **fields: Any) -> Registration:
    inputs = copy.deepcopy(reg.inputs)
    change(inputs)
    return dataclasses.replace(reg, inputs=inputs, **fields)


def _container(inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs["spec"]["template"]["spec"]["containers"][0]


def _failed(pack: engine.Pack, regs: list[Registration]) -> dict[str, list[str]]:
    verdict = pack.analyze(regs)
    assert verdict.advisories == []
    return verdict.failed()


@pytest.mark.parametrize("preview", [False, True], ids=["up", "preview"])
@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_passes_every_policy(stack: str, preview: bool, pack: engine.Pack, rendered: Any) -> None:
    rec = rendered(stack, preview)
    if preview:  # the preview really has unknowns and secrets for the SDK to handle
        assert any(engine.UNKNOWN in str(engine.to_wire(r.inputs)) for r in rec.resources)
    assert any(recording.contains_secret(r.inputs) for r in rec.resources)
    assert set(pack.policies) == POLICIES
    verdict = pack.analyze(rec.resources)
    # No advisory either: an unknown must not make the SDK skip a policy for a resource.
    assert (verdict.failed(), verdict.advisories) == ({}, [])


def test_variants_pass_too(pack: engine.Pack) -> None:
    rec = run_stack(
        "prod",
        overrides={
            "webUi": {"enabled": True},
            "gateway": {"domain": "llm.example.com", "acmeEmail": "ops@example.com"},
            "monitoring": {"receivers": [{"name": "oncall", "webhookUrl": "https://hooks.example.com/x"}]},
        },
    )
    assert _failed(pack, rec.resources) == {}


def test_unpinned_images_and_charts_are_caught(pack: engine.Pack, rendered: Any) -> None:
    deployment = _one(rendered("prod"), "kubernetes:apps/v1:Deployment", "ollama")
    for image in ("ollama/ollama", "ollama/ollama:latest", "registry.local:5000/ollama"):
        bad = _with(deployment, lambda p, i=image: _container(p).__setitem__("image", i))
        assert list(_failed(pack, [bad])) == ["images-pinned"], image
    for image in ("ollama/ollama:0.13.5", "registry.local:5000/x/y:abc123", f"x/y@sha256:{'a' * 64}"):
        good = _with(deployment, lambda p, i=image: _container(p).__setitem__("image", i))
        assert _failed(pack, [good]) == {}, image
    chart = _one(rendered("local"), "kubernetes:helm.sh/v4:Chart", "keda")
    assert "no pinned version" in _failed(pack, [_with(chart, lambda p: p.pop("version"))])["images-pinned"][0]


def test_gpu_pool_without_taint_or_bounds_is_caught(pack: engine.Pack, rendered: Any) -> None:
    pool = _one(rendered("prod"), "azure-native:containerservice:AgentPool", "a10")
    assert _failed(pack, [pool]) == {}
    untainted = _failed(pack, [_with(pool, lambda p: p.__setitem__("nodeTaints", []))])
    assert "no taint" in untainted["gpu-pools-tainted-and-bounded"][0]
    assert _failed(pack, [_with(pool, lambda p: p.__setitem__("enableAutoScaling", False))])
    assert _failed(pack, [_with(pool, lambda p: p.pop("maxCount"))])


def test_privileged_or_root_containers_are_caught(pack: engine.Pack, rendered: Any) -> None:
    deployment = _one(rendered("local"), "kubernetes:apps/v1:Deployment", "onnx")
    privileged = _with(deployment, lambda p: _container(p)["securityContext"].__setitem__("privileged", True))
    assert any("privileged" in v for v in _failed(pack, [privileged])["containers-unprivileged"])

    def as_root(inputs: dict[str, Any]) -> None:
        inputs["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
        _container(inputs)["securityContext"].pop("runAsNonRoot")

    assert any("root" in v for v in _failed(pack, [_with(deployment, as_root)])["containers-unprivileged"])
    escalating = _with(deployment, lambda p: _container(p)["securityContext"].pop("allowPrivilegeEscalation"))
    assert "allowPrivilegeEscalation" in _failed(pack, [escalating])["containers-unprivileged"][0]


def test_unknowns_in_a_preview_are_not_judged_but_the_rest_is(pack: engine.Pack, rendered: Any) -> None:
    """A preview does not know a built image's digest yet: the image is judged on `up`, while the
    same resource's known fields are still checked (the SDK alone would skip the whole policy)."""
    deployment = _one(rendered("local"), "kubernetes:apps/v1:Deployment", "onnx")
    unknown_image = _with(deployment, lambda p: _container(p).__setitem__("image", recording.UNKNOWN))
    assert _failed(pack, [unknown_image]) == {}

    def unknown_image_as_root(inputs: dict[str, Any]) -> None:
        _container(inputs)["image"] = recording.UNKNOWN
        _container(inputs)["securityContext"]["privileged"] = True

    assert "containers-unprivileged" in _failed(pack, [_with(deployment, unknown_image_as_root)])


def test_public_route_without_an_api_key_is_caught(pack: engine.Pack, rendered: Any) -> None:
    # Both backends' routes: the local stack with Ollama beside ONNX would not fit its laptop node.
    regs = rendered("prod").resources
    route = next(r for r in regs if r.type.endswith(":HTTPRoute"))
    extra = _with(route, lambda p: p["metadata"].__setitem__("name", "debug"), urn=route.urn + "-debug")
    assert _failed(pack, [*regs, extra]) == {
        "public-endpoints-authenticated": ["HTTPRoute debug is reachable without an API key"]
    }
    without_policy = [r for r in regs if not r.type.endswith(":SecurityPolicy")]
    assert len(_failed(pack, without_policy)["public-endpoints-authenticated"]) == 3  # vllm, ollama, onnx
    service = next(r for r in regs if r.type == "kubernetes:core/v1:Service")
    exposed = _with(service, lambda p: p["spec"].__setitem__("type", "LoadBalancer"), urn=service.urn + "-lb")
    assert "LoadBalancer" in _failed(pack, [*regs, exposed])["public-endpoints-authenticated"][0]


HF_TOKEN = "hf_" + "a1B2c3D4e5" * 4  # the form of a Hugging Face token


def test_credentials_in_env_literals_are_caught(pack: engine.Pack, rendered: Any) -> None:
    deployment = _one(rendered("local"), "kubernetes:apps/v1:Deployment", "onnx")

    def env(name: str, value: Any) -> Registration:
        return _with(deployment, lambda p: _container(p).setdefault("env", []).append({"name": name, "value": value}))

    assert "literal env value" in _failed(pack, [env("API_KEY", "k")])["no-plain-secrets"][0]
    # Marked secret in the program changes nothing: the SDK hands the rule the plain value.
    assert "literal env value" in _failed(pack, [env("API_KEY", recording.Secret("k"))])["no-plain-secrets"][0]
    assert "is a credential" in _failed(pack, [env("EXTRA", HF_TOKEN)])["no-plain-secrets"][0]
    assert _failed(pack, [env("HF_TOKEN_PATH", "/run/secrets/hf-token")]) == {}


def test_credentials_in_config_maps_helm_values_and_custom_data_are_caught(pack: engine.Pack, rendered: Any) -> None:
    config_map = _one(rendered("prod"), "kubernetes:core/v1:ConfigMap", "modelfiles")
    leaked = _with(
        config_map, lambda p: p.setdefault("data", {}).__setitem__("api-key", "sk-test-0123456789abcdefghij")
    )
    assert "ConfigMap" in _failed(pack, [leaked])["no-plain-secrets"][0]
    env_file = _with(
        config_map, lambda p: p.setdefault("data", {}).__setitem__("app.env", "MODE=x\nAPI_KEY=abcdef123456\n")
    )
    assert "API_KEY set to a literal" in _failed(pack, [env_file])["no-plain-secrets"][0]

    chart = _one(rendered("local"), "kubernetes:helm.sh/v4:Chart", "kube-prometheus-stack")
    for value in ("hunter2", recording.Secret("hunter2")):
        helm = _with(chart, lambda p, v=value: p["values"]["grafana"].__setitem__("adminPassword", v))
        assert "literal credential" in _failed(pack, [helm])["no-plain-secrets"][0]

    vm = _one(rendered("dev"), "azure-native:compute:VirtualMachine")

    def add_file(inputs: dict[str, Any]) -> None:
        text = gzip.decompress(base64.b64decode(recording.unwrap(inputs["osProfile"]["customData"]))).decode()
        text = text.replace(
            "write_files:\n", "write_files:\n- path: /etc/x.env\n  content: 'HF_TOKEN=abcdefgh12345'\n", 1
        )
        inputs["osProfile"]["customData"] = base64.b64encode(gzip.compress(text.encode())).decode()

    found = _failed(pack, [_with(vm, add_file)])["no-plain-secrets"]
    assert found == ["VM slm-dev-vm: custom data file /etc/x.env holds HF_TOKEN set to a literal"]


def test_a_secrets_value_outside_a_secret_store_is_caught(pack: engine.Pack, rendered: Any) -> None:
    """A stack's own secret, whatever it is called, copied into an env literal or a ConfigMap."""
    rec = rendered("prod")
    secret = _one(rec, "kubernetes:core/v1:Secret", "api-keys-gateway")
    key = next(iter(recording.unwrap(secret.inputs["stringData"]).values()))
    config_map = _one(rec, "kubernetes:core/v1:ConfigMap", "modelfiles")
    copied = _with(config_map, lambda p: p.setdefault("data", {}).__setitem__("notes", f"use {key}"))
    regs = [r for r in rec.resources if r.urn != config_map.urn]
    found = _failed(pack, [*regs, copied])
    assert found == {
        "secrets-stay-in-secret-stores": [
            f"{config_map.name}: ConfigMap data notes holds the value of one of the stack's secrets"
        ]
    }
    deployment = _one(rec, "kubernetes:apps/v1:Deployment", "onnx")
    as_env = _with(deployment, lambda p: _container(p).setdefault("env", []).append({"name": "MODE", "value": key}))
    regs = [r for r in rec.resources if r.urn != deployment.urn]
    assert list(_failed(pack, [*regs, as_env])) == ["secrets-stay-in-secret-stores"]


def _chart_child(chart: Registration, object_name: str, host: bool) -> Registration:
    """A DaemonSet as a real helm.v4.Chart registers it: the chart is its parent, in its URN too."""
    qualified = chart.urn.rsplit("::", 1)[0]
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534},
        "containers": [
            {
                "name": "node-exporter",
                "image": "quay.io/prometheus/node-exporter:v1.10.2",
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
            }
        ],
    }
    if host:
        pod |= {"hostNetwork": True, "hostPID": True}
    name = f"{chart.name}:monitoring/{object_name}"
    return Registration(
        urn=f"{qualified}$kubernetes:apps/v1:DaemonSet::{name}",
        type="kubernetes:apps/v1:DaemonSet",
        name=name,
        inputs={
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": object_name, "namespace": "monitoring"},
            "spec": {"template": {"spec": pod}},
        },
        parent=chart.urn,
        provider="",
        custom=True,
        protect=False,
        delete_before_replace=False,
        replace_on_changes=[],
        ignore_changes=[],
        additional_secret_outputs=[],
        depends_on=[],
    )


def test_chart_children_are_checked_with_exemptions_by_chart(pack: engine.Pack, rendered: Any) -> None:
    rec = rendered("local")
    prometheus = _one(rec, "kubernetes:helm.sh/v4:Chart", "kube-prometheus-stack")
    keda = _one(rec, "kubernetes:helm.sh/v4:Chart", "keda")
    exporter = "kube-prometheus-stack-prometheus-node-exporter"
    # kube-prometheus-stack's node exporter may share the host's namespaces, and only that.
    assert _failed(pack, [_chart_child(prometheus, exporter, host=True)]) == {}
    escalating = _chart_child(prometheus, exporter, host=True)
    _container(escalating.inputs)["securityContext"]["privileged"] = True
    found = _failed(pack, [escalating])["containers-unprivileged"]
    assert found == [f"{escalating.name}: container 'node-exporter' runs privileged"]
    # The same object from another chart, or of our own (no chart parent), is not exempt.
    from_keda = _failed(pack, [_chart_child(keda, exporter, host=True)])["containers-unprivileged"]
    assert from_keda == [f"{keda.name}:monitoring/{exporter} shares the host's namespaces (hostNetwork, hostPID)"]
    own = dataclasses.replace(_chart_child(prometheus, exporter, host=True), parent="", urn="urn:own")
    assert "containers-unprivileged" in _failed(pack, [own])
    unpinned = _chart_child(prometheus, exporter, host=False)
    _container(unpinned.inputs)["image"] = "quay.io/prometheus/node-exporter"
    assert list(_failed(pack, [unpinned])) == ["images-pinned"]


def _as_root(reg: Registration) -> Registration:
    pod = reg.inputs["spec"]["template"]["spec"]
    pod["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0}
    return reg


@pytest.mark.parametrize(
    "case",
    [
        ("dcgm-exporter", "dcgm-exporter", "root-and-escalation", "host"),
        ("device-plugin", "nvidia-device-plugin-daemonset", "root", "escalation"),
    ],
)
def test_gpu_chart_exemptions_allow_only_their_findings(
    case: tuple[str, str, str, str], pack: engine.Pack, rendered: Any
) -> None:
    chart, workload, allowed, beyond = case
    parent = _one(rendered("prod"), "kubernetes:helm.sh/v4:Chart", chart)
    child = _as_root(_chart_child(parent, workload, host=False))
    if allowed == "root-and-escalation":
        _container(child.inputs)["securityContext"].pop("allowPrivilegeEscalation")
    assert _failed(pack, [child]) == {}
    worse = _as_root(_chart_child(parent, workload, host=beyond == "host"))
    if beyond == "escalation":
        _container(worse.inputs)["securityContext"].pop("allowPrivilegeEscalation")
    assert list(_failed(pack, [worse])) == ["containers-unprivileged"]
    # The exemption is for the chart's own workload, not anything else the chart registers.
    other = _as_root(_chart_child(parent, "something-else", host=False))
    assert "may run as root" in _failed(pack, [other])["containers-unprivileged"][0]


def test_missing_tags_and_unprotected_prod_data_are_caught(pack: engine.Pack, rendered: Any) -> None:
    vault = _one(rendered("prod"), "azure-native:keyvault:Vault")
    assert _failed(pack, [vault]) == {}
    assert "owner" in _failed(pack, [_with(vault, lambda p: p["tags"].pop("owner"))])["required-tags"][0]
    assert "prod-data-protected" in _failed(pack, [dataclasses.replace(vault, protect=False)])
    dev_vault = _one(rendered("dev"), "azure-native:keyvault:Vault")
    assert _failed(pack, [dataclasses.replace(dev_vault, protect=False)]) == {}


def test_the_pack_module_wires_every_validator_and_is_locked() -> None:
    source = (PROJECT_ROOT / "policy" / "__main__.py").read_text()
    assert "RESOURCE_VALIDATORS.items()" in source and "STACK_VALIDATORS.items()" in source
    assert "EnforcementLevel.MANDATORY" in source
    lock = (PROJECT_ROOT / "policy" / "requirements.txt").read_text()
    assert "pulumi-policy==1.21.0" in lock and "--hash=sha256:" in lock


def test_the_renders_verdict_comes_from_the_pack(rendered: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from offline import render

    rec = rendered("local")
    assert render.policy_results(rec) == {name: [] for name in POLICIES}
    deployment = _one(rec, "kubernetes:apps/v1:Deployment", "onnx")
    leaked = _with(deployment, lambda p: _container(p).setdefault("env", []).append({"name": "API_KEY", "value": "k"}))
    crafted = dataclasses.replace(rec, resources=[leaked if r is deployment else r for r in rec.resources])
    assert len(render.policy_results(crafted)["no-plain-secrets"]) == 1
    # Without the pack's environment the render says it did not check, never that all pass.
    monkeypatch.setenv("SLM_POLICY_PYTHON", "/nonexistent/python")
    unchecked = render.policy_results(rec)
    assert list(unchecked) == [render.NOT_CHECKED]
    summary = {"counts": {}, "resources": 0, "exports": {}}
    markdown = render.preview_markdown(rec, summary, unchecked)
    assert "Not checked: the policy pack was not run: /nonexistent/python does not exist" in markdown
    assert "pass" not in markdown.split("### Policy pack")[1]

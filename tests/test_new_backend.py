"""A fourth engine, registered through the registry alone (infra/backends/registry.py), appears
everywhere a backend must on both targets: the proof that no renderer, export, config rule, rule file
or dashboard names the built-in engines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import images
from infra.backends import registry
from infra.backends.description import Backend, Image, Metrics, Paths, Probes, Route, SecretFile, Volume, http_check
from infra.config import BackendConfig, ConfigError
from infra.conventions import API_KEYS_FILE, backend_job
from infra.monitoring_files import dashboards, shared_rule_files
from offline.recording import Recording
from tests.conftest import run_stack, stack_value
from tests.test_serving_manifests import one
from tests.test_vm import _compose  # pyright: ignore[reportPrivateUsage]

NAME = "llamacpp"


class LlamaCppConfig(BackendConfig):
    model: str = "phi-4-mini-q4_k_m.gguf"


def describe(config: LlamaCppConfig, paths: Paths, prefix: str) -> Backend:
    return Backend(
        name=NAME,
        config=config,
        image=Image(upstream=images.BUSYBOX),  # any pinned image: nothing runs it here
        args=("--model", f"/models/{config.model}", "--api-key-file", f"{paths.secrets}/{API_KEYS_FILE}"),
        probes=Probes(startup="/health", readiness="/health", liveness="/health"),
        health_command=http_check("/health"),
        route=Route(NAME, prefix, ("phi-4-mini-gguf",)),
        volumes=(Volume(claim="llamacpp-models", name="models", mount="/models", size_gb=8),),
        secrets=(SecretFile(API_KEYS_FILE),),
        metrics=Metrics(job=backend_job(NAME), queue_metric="llamacpp:requests_deferred"),
    )


KIND = registry.BackendKind(NAME, LlamaCppConfig, describe, min_compute_capability=9.0)


@pytest.fixture
def fourth() -> Iterator[None]:
    with registry.registered(KIND):
        yield


def _with_fourth(stack: str, **config: Any) -> dict[str, Any]:
    backends = stack_value(stack, "backends")
    return {"backends": {**backends, NAME: {"enabled": True, **config}}}


def test_kubernetes_renders_every_object_of_a_new_backend(fourth: None) -> None:
    del fourth
    rec = run_stack("prod", _with_fourth("prod", scaling={"minReplicas": 1, "maxReplicas": 3}))
    deployment = one(rec, "Deployment", NAME)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["--model", "/models/phi-4-mini-q4_k_m.gguf"]
    assert one(rec, "Service", NAME)["metadata"]["labels"]["slm-serving/job"] == "slm-llamacpp"
    one(rec, "PodDisruptionBudget", NAME)
    one(rec, "PersistentVolumeClaim", "llamacpp-models")
    scaler = one(rec, "ScaledObject", NAME)
    assert "llamacpp:requests_deferred" in scaler["spec"]["triggers"][0]["metadata"]["query"]
    route = one(rec, "HTTPRoute", NAME)
    assert route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/llamacpp/v1"
    policy = one(rec, "SecurityPolicy", "api-key-auth")
    assert {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": NAME} in [
        {k: ref[k] for k in ("group", "kind", "name")} for ref in policy["spec"]["targetRefs"]
    ]
    _assert_endpoint(rec)


def test_the_vm_renders_a_service_a_proxy_route_and_a_scrape_job(fourth: None) -> None:
    del fourth
    # Small enough to share the VM with the three built-in backends (the placement rule).
    rec = run_stack("dev", _with_fourth("dev", resources={"cpu": "1", "memory": "2Gi"}))
    compose = _compose(rec)
    service = compose["services"][NAME]
    assert service["user"] == "10001:10001"
    assert "/var/lib/slm-serving/llamacpp-models:/models" in service["volumes"]
    assert compose["secrets"][API_KEYS_FILE]["file"] == "/run/slm-serving/secrets/api_keys"
    caddyfile = compose["configs"]["caddyfile"]["content"]
    assert "handle_path /llamacpp/* {" in caddyfile
    assert f"reverse_proxy {NAME}:8000" in caddyfile
    prometheus = yaml.safe_load(compose["configs"]["prometheus"]["content"].replace("$$", "$"))
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert jobs["slm-llamacpp"] == [f"{NAME}:8000"]
    _assert_endpoint(rec)


def _assert_endpoint(rec: Recording) -> None:
    endpoint = rec.exports["endpoints"]["backends"][NAME]
    assert endpoint["baseUrl"].endswith("/llamacpp/v1")
    assert endpoint["models"] == ["phi-4-mini-gguf"]


def test_config_validates_the_new_backend_and_its_device(fourth: None) -> None:
    del fourth
    # No GPU pool size of prod reaches this engine's floor (Hopper, 9.0).
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", _with_fourth("prod", model=3))
    found = [str(p) for p in caught.value.problems]
    assert any(p.startswith("slm-serving:backends.llamacpp.model:") for p in found), found
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", _with_fourth("prod", device="gpu"))
    found = [str(p) for p in caught.value.problems]
    assert any(
        p.startswith("slm-serving:backends.llamacpp.device:") and "compute capability >= 9.0" in p for p in found
    ), found


def test_an_unregistered_backend_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", _with_fourth("prod"))
    assert any(str(p).startswith("slm-serving:backends.llamacpp: unknown key") for p in caught.value.problems)


def _selectors(text: str) -> list[str]:
    return re.findall(r"\{([^{}]*(?:envoy_cluster_name|server)[^{}]*)\}", text)


def _matches(selector: str, labels: dict[str, str]) -> bool:
    """Prometheus label matchers (=, !=, =~, !~; anchored regexes) against one series' labels."""
    for name, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', selector):
        actual = labels.get(name, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def test_gateway_rules_and_dashboards_see_every_registered_backend(fourth: None) -> None:
    """The per-backend gateway series (what the error-ratio alert and the dashboards read) select
    any backend's route or proxy server by shape, not by a list of names."""
    del fourth
    recording_rules = shared_rule_files()["recording.rules.yml"]
    envoy = {"envoy_cluster_name": f"httproute/slm-serving/{NAME}/rule/0", "envoy_response_code_class": "5"}
    caddy = {"server": NAME, "handler": "reverse_proxy", "code": "503"}
    selectors = _selectors(recording_rules)
    assert selectors
    for selector in selectors:
        assert _matches(selector, envoy) or _matches(selector, caddy), selector
        # Never the web UI's route or Caddy's public server.
        assert not _matches(selector, {**envoy, "envoy_cluster_name": "httproute/slm-serving/open-webui/rule/0"})
        assert not _matches(selector, {**caddy, "server": "srv0"})
    texts = [*shared_rule_files().values(), *dashboards().values()]
    for name in registry.names():
        for text in texts:
            assert f'backend=\\"{name}\\"' not in text and f'backend="{name}"' not in text
            assert not re.search(rf"[(|]{name}[|)]", text), f"a rule or dashboard lists {name}"


def test_readme_says_what_a_new_backend_needs() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Adding a backend", 1)[1].split("\n## ", 1)[0]
    for needed in ("infra/backends/", "registry.py", "tests/", "describe"):
        assert needed in section


def test_registry_order_is_the_config_order() -> None:
    assert list(json.loads(json.dumps(registry.names()))) == ["vllm", "ollama", "onnx"]

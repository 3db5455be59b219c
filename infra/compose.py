"""The Compose project the VM runs: the enabled backends (vLLM, Ollama, the ONNX server), Open WebUI
when enabled, the TLS proxy that is the only public listener and checks API keys, the one-shot
conversion and model jobs, and monitoring. Built from the same settings as the Kubernetes side.

Secrets never appear here: the VM fetches them from Key Vault into tmpfs at boot (cloud_init.py) and
services read them as Compose secrets (files under /run/secrets)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra import images
from infra.azure.keyvault import GRAFANA_PASSWORD_SECRET, HF_TOKEN_SECRET, WEBUI_SECRET_KEY_SECRET, api_key_secret
from infra.config import BackendConfig, ResourcesConfig, StackSettings
from infra.conversion_plan import conversion_spec, converter_arguments
from infra.endpoints import BACKEND_PORT, Route, routes, served_models
from infra.images import image_ref
from infra.modelfiles import modelfile, server_environment
from infra.monitoring_files import JOBS, alertmanager_config, dashboards, rule_files

# Pinned in infra/images.py; the VM pulls them at boot.
STATUS_IMAGE = images.BUSYBOX
PROMETHEUS_IMAGE = images.PROMETHEUS
GRAFANA_IMAGE = images.GRAFANA
NODE_EXPORTER_IMAGE = images.NODE_EXPORTER
DCGM_EXPORTER_IMAGE = images.DCGM_EXPORTER
VLLM_IMAGE = images.VLLM
VLLM_CPU_IMAGE = images.VLLM_CPU
OLLAMA_IMAGE = images.OLLAMA
OPEN_WEBUI_IMAGE = images.OPEN_WEBUI
CADDY_IMAGE = images.CADDY
# Runs only when receivers are configured.
ALERTMANAGER_IMAGE = images.ALERTMANAGER
SECRETS_GROUP = "10001"  # the group that may read the tmpfs secrets
SECRETS_DIR = "/run/slm-serving/secrets"
GRAFANA_PASSWORD_FILE = f"{SECRETS_DIR}/grafana_admin_password"
HF_TOKEN_FILE = f"{SECRETS_DIR}/hf_token"
DATA_DIR = "/var/lib/slm-serving"
MODELS_DIR = f"{DATA_DIR}/models"
CONVERTER_UID = 10001
APP_UID = 10001  # every service that can run unprivileged runs as this user (the secrets' group)

# Files the VM's slm-fetch-secrets writes into SECRETS_DIR, and the Compose secrets that mount them.
API_KEYS_FILE = "api_keys"  # one key per line, every client's
# Generated from api_keys at boot (cloud_init.py): a Caddy matcher for requests without a valid key,
# and the header the proxy sends upstream (the first key, which every backend accepts).
API_KEYS_CADDY_FILE = "api_keys.caddy"
UPSTREAM_AUTH_CADDY_FILE = "upstream_auth.caddy"

# Host folders on the data disk (cloud-init creates them with these owners).
DATA_FOLDERS: dict[str, int] = {
    "models": CONVERTER_UID,
    "vllm-cache": 0,
    "ollama": APP_UID,
    "caddy/data": APP_UID,
    "caddy/config": APP_UID,
    "webui": 0,
}

PROXY_PORT = 8443  # in the container; published as 443
PROXY_HEALTH_PORT = 8081
# Caddy labels its metrics by server, not by route: each backend gets its own server on loopback,
# named after the backend, which the public server hands the request to after the key check.
BACKEND_SERVER_PORTS = {"vllm": 9101, "ollama": 9102, "onnx": 9103}
PROXY_METRICS_PORT = 9180  # on the Compose network only (not published); Prometheus job slm-gateway
WEBUI_PORT = 8080
UNAUTHORIZED_BODY = (
    '{"error": {"message": "Missing or invalid API key: send Authorization: Bearer <key>", '
    '"type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}'
)


def vm_generated_secrets(settings: StackSettings) -> tuple[str, ...]:
    """Key Vault secrets the stack generates for the VM: Grafana's password, one API key per client,
    and Open WebUI's session key when it runs."""
    names = [GRAFANA_PASSWORD_SECRET, *(api_key_secret(c) for c in settings.gateway.api_key_clients)]
    if settings.web_ui.enabled:
        names.append(WEBUI_SECRET_KEY_SECRET)
    return tuple(names)


def vm_secret_files(settings: StackSettings) -> tuple[tuple[str, str], ...]:
    """Key Vault secret name -> file in the VM's tmpfs; the API keys all go into one file, a line each."""
    files = [
        (HF_TOKEN_SECRET, "hf_token"),
        (GRAFANA_PASSWORD_SECRET, "grafana_admin_password"),
        *((api_key_secret(c), API_KEYS_FILE) for c in settings.gateway.api_key_clients),
    ]
    if settings.web_ui.enabled:
        files.append((WEBUI_SECRET_KEY_SECRET, "webui_secret_key"))
    return tuple(files)


def _hardened(service: dict[str, Any]) -> dict[str, Any]:
    return {
        **service,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }


def escape_interpolation(value: Any) -> Any:
    """Compose substitutes `$VAR` in every string of the file, configs' content included: `$$` is a
    literal `$` (alert templates' `$labels`, dashboards' `${datasource}`, the entrypoint scripts)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: escape_interpolation(v) for k, v in value.items()}
    if isinstance(value, list):
        return [escape_interpolation(v) for v in value]
    return value


def _ref(registry: str, refs: Mapping[tuple[str, str], str] | None, name: str, variant: str) -> str:
    """The pushed image (tag@digest) when the stack built it, else its build-context tag."""
    return (refs or {}).get((name, variant)) or image_ref(registry, name, variant)


def compose_project(
    settings: StackSettings,
    registry: str,
    refs: Mapping[tuple[str, str], str] | None = None,
    public_host: str | None = None,
) -> str:
    services: dict[str, Any] = {
        "status": _hardened(
            {
                "image": STATUS_IMAGE,
                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                "user": "65534:65534",
                # Loopback only: nothing but the TLS proxy listens publicly.
                "ports": ["127.0.0.1:8080:8080"],
                "configs": [{"source": "status", "target": "/www/index.html"}],
                "restart": "unless-stopped",
                "healthcheck": {"test": ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"], "interval": "30s"},
            }
        )
    }
    document: dict[str, Any] = {
        "name": "slm-serving",
        "services": services,
        "configs": {"status": {"content": f"slm-serving {settings.environment}\n"}},
        "secrets": {},
    }
    backends = settings.backends
    if backends.vllm.enabled:
        _add_vllm(document, settings)
    if backends.ollama.enabled:
        _add_ollama(document, settings)
    if backends.onnx.enabled:
        _add_onnx(document, settings, registry, refs)
    if settings.web_ui.enabled:
        _add_web_ui(document, settings)
    _add_proxy(document, settings, public_host)
    _add_monitoring(document, settings)
    return yaml.safe_dump(escape_interpolation(document), sort_keys=False, width=1000)


# --- backends ----------------------------------------------------------------------------------


def _limits(resources: ResourcesConfig) -> dict[str, str]:
    """Kubernetes quantities as Compose limits: '500m' -> '0.5' CPUs, '24Gi' -> '24g'."""
    cpu = resources.cpu
    cpus = f"{int(cpu[:-1]) / 1000:g}" if cpu.endswith("m") else cpu
    memory = resources.memory.replace("Gi", "g").replace("Mi", "m")
    return {"cpus": cpus, "memory": memory}


def _deploy(backend: BackendConfig) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": _limits(backend.resources)}
    if backend.device == "gpu":
        resources["reservations"] = {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
    return {"resources": resources}


def _healthcheck(test: list[str], backend: BackendConfig) -> dict[str, Any]:
    # start_period: the time a first start may take to download and load the model.
    return {
        "test": test,
        "interval": "30s",
        "timeout": "10s",
        "retries": 3,
        "start_period": f"{backend.startup_minutes}m",
    }


def _python_get(url: str) -> list[str]:
    """A healthcheck for images with python3 but maybe no curl: urlopen raises on a non-2xx answer."""
    return ["CMD", "python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"]


def _secret(document: dict[str, Any], name: str, file: str) -> None:
    document["secrets"][name] = {"file": f"{SECRETS_DIR}/{file}"}


def _first_api_key(variable: str) -> str:
    """Shell that exports the first API key from the mounted file, or stops: never serve without one."""
    return (
        f'{variable}="$(head -n 1 /run/secrets/{API_KEYS_FILE})"; '
        f'[ -n "${variable}" ] || {{ echo "no API key in /run/secrets/{API_KEYS_FILE}" >&2; exit 1; }}; '
        f"export {variable}; "
    )


def _add_vllm(document: dict[str, Any], settings: StackSettings) -> None:
    vllm = settings.backends.vllm
    arguments = [
        "--model",
        vllm.model,
        "--revision",
        vllm.revision,
        "--served-model-name",
        served_models(settings, "vllm")[0],
        "--max-model-len",
        str(vllm.max_model_len),
        "--gpu-memory-utilization",
        f"{vllm.gpu_memory_utilization:g}",
        "--max-num-seqs",
        str(vllm.max_num_seqs),
        "--dtype",
        vllm.dtype,
        "--host",
        "0.0.0.0",  # noqa: S104 (the Compose network only; no port is published)
        "--port",
        str(BACKEND_PORT),
    ]
    if vllm.quantization:
        arguments += ["--quantization", vllm.quantization]
    if vllm.tool_call_parser:
        arguments += ["--enable-auto-tool-choice", "--tool-call-parser", vllm.tool_call_parser]
    _secret(document, "hf_token", "hf_token")
    _secret(document, "api_keys", API_KEYS_FILE)
    # Exceptions to the hardening: the image runs as root (without capabilities) and writes caches
    # under $HOME (torch.compile, Triton, FlashInfer, CUDA kernels): HOME and the HF cache live on the
    # data disk, /tmp is a tmpfs, the root filesystem stays read-only. /dev/shm for PyTorch's
    # inter-process tensors (a private IPC namespace, not the host's).
    document["services"]["vllm"] = _hardened(
        {
            "image": VLLM_IMAGE if vllm.device == "gpu" else VLLM_CPU_IMAGE,
            # vLLM reads its key from VLLM_API_KEY; the key itself stays in the secret file.
            "entrypoint": ["/bin/sh", "-c", _first_api_key("VLLM_API_KEY") + 'exec vllm serve "$@"', "vllm"],
            "command": arguments,
            "environment": {
                "HOME": "/cache/home",
                "HF_HOME": "/cache/huggingface",
                "HF_TOKEN_PATH": "/run/secrets/hf_token",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1",
            },
            "secrets": ["hf_token", "api_keys"],
            "volumes": [f"{DATA_DIR}/vllm-cache:/cache"],
            "tmpfs": ["/tmp"],
            "shm_size": "2gb",
            "deploy": _deploy(vllm),
            "healthcheck": _healthcheck(_python_get(f"http://127.0.0.1:{BACKEND_PORT}/health"), vllm),
            "restart": "unless-stopped",
        }
    )


def _modelfile_config(variant_name: str) -> str:
    return f"modelfile-{variant_name}"


def _add_ollama(document: dict[str, Any], settings: StackSettings) -> None:
    ollama = settings.backends.ollama
    # The image runs as root by default; as APP_UID it needs a writable HOME (its key pair) and
    # model folder, both on the data disk.
    document["services"]["ollama"] = _hardened(
        {
            "image": OLLAMA_IMAGE,
            "user": f"{APP_UID}:{APP_UID}",
            "environment": {
                "OLLAMA_HOST": f"0.0.0.0:{BACKEND_PORT}",
                "OLLAMA_MODELS": "/ollama/models",
                "HOME": "/ollama",
                **server_environment(ollama),
            },
            "volumes": [f"{DATA_DIR}/ollama:/ollama"],
            "tmpfs": ["/tmp"],
            "deploy": _deploy(ollama),
            # The CLI talks to the server named by OLLAMA_HOST: it lists only when the API answers.
            "healthcheck": _healthcheck(["CMD", "ollama", "list"], ollama),
            "restart": "unless-stopped",
        }
    )
    configs = document["configs"]
    script = [
        "set -eu",
        # A model already in the volume is not pulled again (the tag is pinned in the stack config).
        f"ollama show {ollama.model} >/dev/null 2>&1 || ollama pull {ollama.model}",
    ]
    mounts = []
    for variant in ollama.variants:
        config = _modelfile_config(variant.name)
        configs[config] = {"content": modelfile(ollama.model, variant)}
        mounts.append({"source": config, "target": f"/modelfiles/{variant.name}"})
        script.append(f"ollama create {variant.name} -f /modelfiles/{variant.name}")
    document["services"]["ollama-models"] = _hardened(
        {
            "image": OLLAMA_IMAGE,
            "user": f"{APP_UID}:{APP_UID}",
            "entrypoint": ["/bin/sh", "-c", "; ".join(script)],
            "environment": {"OLLAMA_HOST": f"http://ollama:{BACKEND_PORT}", "HOME": "/tmp"},
            "configs": mounts,
            "tmpfs": ["/tmp"],
            "depends_on": {"ollama": {"condition": "service_healthy"}},
            # One shot: pulls once into the volume, (re)creates the variants, exits; retried on failure.
            "restart": "on-failure",
        }
    )


def _add_onnx(
    document: dict[str, Any], settings: StackSettings, registry: str, refs: Mapping[tuple[str, str], str] | None
) -> None:
    onnx = settings.backends.onnx
    target = onnx.conversion_target
    key = conversion_spec(onnx.conversion, target).key()
    services = document["services"]
    services["convert"] = _hardened(
        {
            "image": _ref(registry, refs, "converter", "cpu"),
            "command": converter_arguments(onnx.conversion, target, f"/models/{key}"),
            "user": f"{CONVERTER_UID}:{CONVERTER_UID}",
            "environment": {
                "HF_TOKEN_PATH": "/run/secrets/hf_token",
                "HF_HOME": "/tmp/huggingface",
                "OLIVE_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
            },
            "secrets": ["hf_token"],
            "volumes": [f"{MODELS_DIR}:/models"],
            "tmpfs": ["/tmp"],
            # One shot: the ONNX server starts after it completes (depends_on
            # service_completed_successfully); an unchanged key finds its output and exits at once.
            "restart": "no",
        }
    )
    _secret(document, "hf_token", "hf_token")
    _secret(document, "api_keys", API_KEYS_FILE)
    services["onnx"] = _hardened(
        {
            # The CUDA build of the server on a GPU backend.
            "image": _ref(registry, refs, "onnx-server", "cuda" if onnx.device == "gpu" else "cpu"),
            "command": [
                "--model",
                f"/models/{key}",
                "--host",
                "0.0.0.0",  # noqa: S104 (the Compose network only; no port is published)
                "--port",
                str(BACKEND_PORT),
                "--served-model-name",
                served_models(settings, "onnx")[0],
                "--api-key-file",
                f"/run/secrets/{API_KEYS_FILE}",
                "--max-batch",
                str(onnx.max_batch),
                "--max-waiting",
                str(onnx.max_waiting),
            ],
            "user": f"{APP_UID}:{APP_UID}",
            "secrets": ["api_keys"],
            "volumes": [f"{MODELS_DIR}:/models:ro"],
            "tmpfs": ["/tmp"],
            "depends_on": {"convert": {"condition": "service_completed_successfully"}},
            "deploy": _deploy(onnx),
            "healthcheck": _healthcheck(_python_get(f"http://127.0.0.1:{BACKEND_PORT}/health"), onnx),
            "restart": "unless-stopped",
        }
    )


def _add_web_ui(document: dict[str, Any], settings: StackSettings) -> None:
    backends = list(settings.backends.enabled())
    urls = ";".join(f"http://{name}:{BACKEND_PORT}/v1" for name in backends)
    _secret(document, "api_keys", API_KEYS_FILE)
    _secret(document, "webui_secret_key", "webui_secret_key")
    keys = ";".join(["$OPENAI_KEY"] * len(backends))
    script = (
        _first_api_key("OPENAI_KEY")
        + f'OPENAI_API_KEYS="{keys}"; export OPENAI_API_KEYS; '
        + 'WEBUI_SECRET_KEY="$(cat /run/secrets/webui_secret_key)"; export WEBUI_SECRET_KEY; '
        + "exec bash /app/backend/start.sh"
    )
    # Exceptions to the hardening: the image runs as root and writes into its own app folder at start
    # (static files, its secret-key file), so the root filesystem stays writable; capabilities are
    # dropped all the same.
    document["services"]["webui"] = {
        "image": OPEN_WEBUI_IMAGE,
        "entrypoint": ["/bin/sh", "-c", script],
        "environment": {
            "WEBUI_AUTH": "True",
            "ENABLE_OLLAMA_API": "False",
            "OPENAI_API_BASE_URLS": urls,
            "PORT": str(WEBUI_PORT),
            "SCARF_NO_ANALYTICS": "true",
            "DO_NOT_TRACK": "true",
            "ANONYMIZED_TELEMETRY": "false",
        },
        "secrets": ["api_keys", "webui_secret_key"],
        "volumes": [f"{DATA_DIR}/webui:/app/backend/data"],
        "read_only": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "healthcheck": {
            "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{WEBUI_PORT}/health"],
            "interval": "30s",
            "timeout": "10s",
            "retries": 3,
            "start_period": "5m",
        },
        "restart": "unless-stopped",
    }


# --- the TLS proxy -----------------------------------------------------------------------------


def _route_body(route: Route) -> list[str]:
    """A backend's handler: 401 without a valid key, else on to the backend's own server, streaming."""
    return [
        "handle @no_api_key {",
        '\theader WWW-Authenticate "Bearer"',
        "\theader Content-Type application/json",
        f"\trespond `{UNAUTHORIZED_BODY}` 401",
        "}",
        "handle {",
        f"\treverse_proxy 127.0.0.1:{BACKEND_SERVER_PORTS[route.backend]} {{",
        "\t\t# Server-sent events: pass every chunk on at once.",
        "\t\tflush_interval -1",
        "\t}",
        "}",
    ]


def _backend_server(route: Route) -> list[str]:
    """The backend's own server on loopback: proxies to the backend with the upstream key. Its requests
    carry server="<backend>" in Caddy's metrics."""
    return [
        f"http://:{BACKEND_SERVER_PORTS[route.backend]} {{",
        "\tbind 127.0.0.1",
        f"\treverse_proxy {route.backend}:{BACKEND_PORT} {{",
        "\t\tflush_interval -1",
        f"\t\timport /run/secrets/{_caddy_secret(UPSTREAM_AUTH_CADDY_FILE)}",
        "\t}",
        "}",
        "",
    ]


def _caddy_secret(file: str) -> str:
    return file.replace(".", "_")


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return [("\t" * depth + line) if line else line for line in lines]


def caddyfile(settings: StackSettings, public_host: str | None = None) -> str:
    """The proxy's Caddyfile: every backend route needs `Authorization: Bearer <one of the keys>`;
    Open WebUI (the root path, or ui.<domain>) has its own sign-in."""
    gateway = settings.gateway
    global_options = [
        "admin off",
        "http_port 8080",  # unpublished: HTTP is not served; ACME uses TLS-ALPN on 443
        f"https_port {PROXY_PORT}",
        "skip_install_trust",  # unprivileged: the internal CA is not added to the image's trust store
    ]
    if gateway.domain:
        global_options += [f"email {gateway.acme_email}", f"acme_ca {gateway.acme_server}"]
    else:
        # Clients use the VM's DNS name (its certificate is issued on demand for the name they ask
        # for); a client that connects by IP sends no SNI and gets the DNS name's certificate.
        global_options.append(f"default_sni {public_host or 'slm-serving'}")
    route_list = routes(settings)
    # Request metrics (Caddy 2.10: the `metrics` option), per backend through the servers' names;
    # the backend servers trust the public one's X-Forwarded-For (the client's address).
    global_options.append("metrics")
    for route in route_list:
        global_options += [
            f"servers 127.0.0.1:{BACKEND_SERVER_PORTS[route.backend]} {{",
            f"\tname {route.backend}",
            "\ttrusted_proxies static 127.0.0.1/32",
            "}",
        ]
    lines = ["{", *_indent(global_options), "}", ""]
    # ACME (when a domain is set) must reach this proxy on 443 for its TLS-ALPN challenge: the NSG
    # admits only allowedCidrs, so the CA's validation servers must be among them (or use a DNS-01
    # capable build). Without a domain the certificate comes from Caddy's internal CA (self-signed).
    tls = [f"tls {gateway.acme_email}"] if gateway.domain else ["tls internal {", "\ton_demand", "}"]
    auth = [f"import /run/secrets/{_caddy_secret(API_KEYS_CADDY_FILE)}"]
    ui = ["reverse_proxy webui:" + str(WEBUI_PORT)]
    if gateway.routing == "host" and gateway.domain:
        for route in route_list:
            lines += [f"{route.prefix}.{gateway.domain} {{", *_indent([*tls, *auth, *_route_body(route)]), "}", ""]
        if settings.web_ui.enabled:
            lines += [f"ui.{gateway.domain} {{", *_indent([*tls, *ui]), "}", ""]
    else:
        body = [*tls, *auth]
        for route in route_list:
            body += [f"handle_path /{route.prefix}/* {{", *_indent(_route_body(route)), "}"]
        # Open WebUI serves from the root path only: it takes whatever no backend prefix matches.
        body += ["handle {", *_indent(ui if settings.web_ui.enabled else ["respond 404"]), "}"]
        lines += [f"{gateway.domain or f':{PROXY_PORT}'} {{", *_indent(body), "}", ""]
    for route in route_list:
        lines += _backend_server(route)
    # Scraped by Prometheus over the Compose network (job slm-gateway); the port is not published.
    lines += [f"http://:{PROXY_METRICS_PORT} {{", "\tmetrics /metrics", "}", ""]
    lines += [f"http://127.0.0.1:{PROXY_HEALTH_PORT} {{", "\tbind 127.0.0.1", "\trespond /healthz 200", "}"]
    return "\n".join(lines) + "\n"


def _add_proxy(document: dict[str, Any], settings: StackSettings, public_host: str | None) -> None:
    document["configs"]["caddyfile"] = {"content": caddyfile(settings, public_host)}
    for file in (API_KEYS_CADDY_FILE, UPSTREAM_AUTH_CADDY_FILE):
        _secret(document, _caddy_secret(file), file)
    document["services"]["proxy"] = _hardened(
        {
            "image": CADDY_IMAGE,
            "user": f"{APP_UID}:{APP_UID}",
            # The image's caddy binary carries the file capability cap_net_bind_service=+ep; the kernel
            # refuses to exec it when that capability is outside the bounding set.
            "cap_add": ["NET_BIND_SERVICE"],
            # The only port on a public interface (the NSG admits allowedCidrs on 443).
            "ports": [f"443:{PROXY_PORT}"],
            "configs": [{"source": "caddyfile", "target": "/etc/caddy/Caddyfile"}],
            "secrets": [_caddy_secret(API_KEYS_CADDY_FILE), _caddy_secret(UPSTREAM_AUTH_CADDY_FILE)],
            "volumes": [f"{DATA_DIR}/caddy/data:/data", f"{DATA_DIR}/caddy/config:/config"],
            "tmpfs": ["/tmp"],
            "healthcheck": {
                "test": ["CMD", "wget", "-q", "-O-", f"http://127.0.0.1:{PROXY_HEALTH_PORT}/healthz"],
                "interval": "30s",
                "timeout": "5s",
                "retries": 3,
            },
            "restart": "unless-stopped",
        }
    )


# --- monitoring --------------------------------------------------------------------------------


ALERTMANAGER_PORT = 9093


def _prometheus_config(settings: StackSettings) -> str:
    """Scrape jobs named as on Kubernetes (infra/monitoring_files.JOBS): the node, the GPUs, the
    backends with /metrics (vLLM, the ONNX server) and the proxy, which measures every backend
    (Ollama has no /metrics)."""
    targets = {JOBS["node"]: "node-exporter:9100"}
    if settings.vm.has_gpu:
        targets[JOBS["dcgm"]] = "dcgm-exporter:9400"
    # The serving layer names its backend services after the backends, each on port 8000.
    for name in settings.backends.enabled():
        if name in JOBS:  # not Ollama: the proxy measures it
            targets[JOBS[name]] = f"{name}:{BACKEND_PORT}"
    targets[JOBS["gateway"]] = f"proxy:{PROXY_METRICS_PORT}"
    config: dict[str, Any] = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "30s"},
        "rule_files": ["/etc/prometheus/rules/*.yml"],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    if settings.monitoring.receivers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [f"alertmanager:{ALERTMANAGER_PORT}"]}]}]
        }
    return yaml.safe_dump(config, sort_keys=False)


def _file_configs(configs: dict[str, Any], files: dict[str, str], prefix: str, target_dir: str) -> list[dict[str, str]]:
    """Files (name -> text) as Compose configs named <prefix>-<stem>; returns their mounts."""
    mounts = []
    for name, text in files.items():
        config = f"{prefix}-{Path(name).stem}"
        configs[config] = {"content": text}
        mounts.append({"source": config, "target": f"{target_dir}/{name}"})
    return mounts


def _add_monitoring(document: dict[str, Any], settings: StackSettings) -> None:
    """Prometheus, Grafana, node exporter (and DCGM on GPU sizes), with the same rules and dashboards
    as the Kubernetes targets plus the thresholds rendered from the config, all on loopback only;
    Alertmanager when receivers are configured."""
    services, configs = document["services"], document.setdefault("configs", {})
    configs["prometheus"] = {"content": _prometheus_config(settings)}
    rule_mounts = _file_configs(configs, rule_files(settings), "rules", "/etc/prometheus/rules")
    services["prometheus"] = _hardened(
        {
            "image": PROMETHEUS_IMAGE,
            "command": ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.retention.time=15d"],
            "configs": [{"source": "prometheus", "target": "/etc/prometheus/prometheus.yml"}, *rule_mounts],
            "volumes": ["prometheus-data:/prometheus"],
            "ports": ["127.0.0.1:9090:9090"],
            "restart": "unless-stopped",
        }
    )
    volumes: dict[str, Any] = {"prometheus-data": {}, "grafana-data": {}}
    if settings.monitoring.receivers:
        _add_alertmanager(document, settings)
        volumes["alertmanager-data"] = {}
    configs["grafana-datasource"] = {
        "content": yaml.safe_dump(
            {
                "apiVersion": 1,
                "datasources": [
                    {"name": "Prometheus", "type": "prometheus", "url": "http://prometheus:9090", "isDefault": True}
                ],
            }
        )
    }
    configs["grafana-dashboards"] = {
        "content": yaml.safe_dump(
            {
                "apiVersion": 1,
                "providers": [{"name": "slm-serving", "type": "file", "options": {"path": "/etc/dashboards"}}],
            }
        )
    }
    dashboard_mounts = _file_configs(configs, dashboards(), "dashboard", "/etc/dashboards")
    services["grafana"] = _hardened(
        {
            "image": GRAFANA_IMAGE,
            "group_add": [SECRETS_GROUP],
            "environment": {
                "GF_SECURITY_ADMIN_PASSWORD__FILE": "/run/secrets/grafana_admin_password",
                "GF_AUTH_ANONYMOUS_ENABLED": "false",
                "GF_USERS_ALLOW_SIGN_UP": "false",
                "GF_ANALYTICS_REPORTING_ENABLED": "false",
                "GF_ANALYTICS_CHECK_FOR_UPDATES": "false",
            },
            "secrets": ["grafana_admin_password"],
            "configs": [
                {"source": "grafana-datasource", "target": "/etc/grafana/provisioning/datasources/prometheus.yml"},
                {"source": "grafana-dashboards", "target": "/etc/grafana/provisioning/dashboards/slm-serving.yml"},
                *dashboard_mounts,
            ],
            "volumes": ["grafana-data:/var/lib/grafana"],
            "tmpfs": ["/tmp"],
            "ports": ["127.0.0.1:3000:3000"],
            "depends_on": ["prometheus"],
            "restart": "unless-stopped",
        }
    )
    services["node-exporter"] = _hardened(
        {
            "image": NODE_EXPORTER_IMAGE,
            "command": ["--path.rootfs=/host"],
            "pid": "host",
            "volumes": ["/:/host:ro,rslave"],
            "restart": "unless-stopped",
        }
    )
    if settings.vm.has_gpu:
        services["dcgm-exporter"] = _hardened(
            {
                "image": DCGM_EXPORTER_IMAGE,
                "deploy": {
                    "resources": {
                        "reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
                    }
                },
                "restart": "unless-stopped",
            }
        )
    document["secrets"]["grafana_admin_password"] = {"file": GRAFANA_PASSWORD_FILE}
    document["volumes"] = volumes


def _add_alertmanager(document: dict[str, Any], settings: StackSettings) -> None:
    """Alertmanager sends every alert to every configured receiver. Its configuration holds no secret:
    webhook URLs are plain config, and email goes through the configured relay without credentials."""
    document["configs"]["alertmanager"] = {"content": alertmanager_config(settings)}
    document["services"]["alertmanager"] = _hardened(
        {
            "image": ALERTMANAGER_IMAGE,
            # One instance: no cluster listener (it would bind 0.0.0.0:9094 for peers).
            "command": [
                "--config.file=/etc/alertmanager/alertmanager.yml",
                "--storage.path=/alertmanager",
                "--cluster.listen-address=",
            ],
            "configs": [{"source": "alertmanager", "target": "/etc/alertmanager/alertmanager.yml"}],
            "volumes": ["alertmanager-data:/alertmanager"],
            "ports": [f"127.0.0.1:{ALERTMANAGER_PORT}:{ALERTMANAGER_PORT}"],
            "restart": "unless-stopped",
        }
    )

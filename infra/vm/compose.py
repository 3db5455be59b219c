"""The Compose project the VM runs, from the backend descriptions (infra/backends): each enabled
backend and its one-shot preparation, Open WebUI when enabled, the TLS proxy that is the only public
listener and checks API keys (infra/vm/caddy.py), and monitoring (infra/vm/monitoring.py).

Secrets never appear here: the VM fetches them from Key Vault into tmpfs at boot (cloud_init.py) and
services read them as Compose secrets (files under /run/secrets)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import yaml

from infra import images, open_webui
from infra.backends import registry
from infra.backends.description import Backend, Image, Paths, Preparation, SecretFile
from infra.config import StackSettings
from infra.conventions import API_KEYS_FILE, WORKLOAD_UID
from infra.images import image_ref
from infra.vm import caddy, monitoring
from infra.vm.secrets import (
    DATA_DIR,
    MOUNTED_SECRETS,
    WEBUI_FOLDER,
    WEBUI_SECRET_KEY_FILE,
    host_path,
)
from infra.vm.services import hardened

STATUS_IMAGE = images.BUSYBOX
OPEN_WEBUI_IMAGE = images.OPEN_WEBUI
USER = f"{WORKLOAD_UID}:{WORKLOAD_UID}"
WEBUI_PORT = caddy.WEBUI_PORT
WEBUI_SECRET = "webui-secret-key"  # noqa: S105 (a Compose secret's name)


def described(settings: StackSettings) -> list[Backend]:
    """The enabled backends as the VM provides for them (secrets mounted by Compose)."""
    return registry.enabled(settings.backends, Paths(secrets=MOUNTED_SECRETS))


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


def compose_project(
    settings: StackSettings,
    registry_server: str,
    refs: Mapping[tuple[str, str], str] | None = None,
    public_host: str | None = None,
) -> str:
    services: dict[str, Any] = {
        "status": hardened(
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
    backends = described(settings)
    for backend in backends:
        _add_backend(document, backend, lambda image: _image(image, registry_server, refs))
    if settings.web_ui.enabled:
        _add_web_ui(document, backends)
    caddy.add_proxy(document, settings, backends, public_host)
    monitoring.add_monitoring(document, settings, backends)
    return yaml.safe_dump(escape_interpolation(document), sort_keys=False, width=1000)


def _image(image: Image, registry_server: str, refs: Mapping[tuple[str, str], str] | None) -> str:
    """Upstream: its pin. Ours: the pushed image (tag@digest) when the stack built it, else its tag."""
    if image.upstream is not None:
        return image.upstream
    assert image.own is not None
    return (refs or {}).get(image.own) or image_ref(registry_server, *image.own)


def limits(cpu: str, memory: str) -> dict[str, str]:
    """Kubernetes quantities as Compose limits: '500m' -> '0.5' CPUs, '24Gi' -> '24g'."""
    cpus = f"{int(cpu[:-1]) / 1000:g}" if cpu.endswith("m") else cpu
    return {"cpus": cpus, "memory": compose_size(memory)}


def compose_size(quantity: str) -> str:
    return quantity.replace("Gi", "g").replace("Mi", "m")


def _deploy(backend: Backend) -> dict[str, Any]:
    r = backend.config.resources
    resources: dict[str, Any] = {"limits": limits(r.cpu, r.memory)}
    if backend.gpu:
        resources["reservations"] = {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
    return {"resources": resources}


def _healthcheck(backend: Backend) -> dict[str, Any]:
    # start_period: the time a first start may take to download and load the model.
    return {
        "test": ["CMD", *backend.health_command],
        "interval": "30s",
        "timeout": "10s",
        "retries": 3,
        "start_period": f"{backend.config.startup_minutes}m",
    }


def _secrets(document: dict[str, Any], files: tuple[SecretFile, ...]) -> list[str]:
    """Compose secrets named after the files backends read: mounted at /run/secrets/<file>."""
    for f in files:
        document["secrets"][f.file] = {"file": host_path(f.file)}
    return [f.file for f in files]


def _volumes(backend: Backend, read_write: bool = False) -> list[str]:
    return [f"{DATA_DIR}/{v.claim}:{v.mount}{':ro' if v.read_only and not read_write else ''}" for v in backend.volumes]


def _entry(service: dict[str, Any], command: tuple[str, ...] | None, args: tuple[str, ...]) -> None:
    if command is not None:
        service["entrypoint"] = list(command)
    if args:
        service["command"] = list(args)


def _configs(document: dict[str, Any], owner: str, files: Mapping[str, str], mount: str) -> list[dict[str, str]]:
    """Plain files as Compose configs (read-only in the container) at `mount`/<name>."""
    folder = PurePosixPath(mount).name
    mounts = []
    for file_name, content in files.items():
        config = f"{owner}-{folder}-{file_name}"
        document["configs"][config] = {"content": content}
        mounts.append({"source": config, "target": f"{mount}/{file_name}"})
    return mounts


def _add_backend(document: dict[str, Any], backend: Backend, image: Any) -> None:
    service: dict[str, Any] = {"image": image(backend.image), "user": USER}
    _entry(service, backend.command, backend.args)
    service.update(
        {
            "environment": dict(backend.env),
            "secrets": _secrets(document, backend.secrets),
            "volumes": _volumes(backend),
            "tmpfs": ["/tmp"],
        }
    )
    if backend.files:
        assert backend.files_mount is not None
        service["configs"] = _configs(document, backend.name, backend.files, backend.files_mount)
    if backend.shm_size is not None:
        # PyTorch's inter-process tensors (a private IPC namespace, not the host's).
        service["shm_size"] = compose_size(backend.shm_size) + "b"
    if backend.preparation is not None:
        _add_preparation(document, backend, backend.preparation, image)
        service["depends_on"] = {backend.preparation.name: {"condition": "service_completed_successfully"}}
    service.update({"deploy": _deploy(backend), "healthcheck": _healthcheck(backend), "restart": "unless-stopped"})
    if not service["secrets"]:
        del service["secrets"]
    document["services"][backend.name] = hardened(service)


def _add_preparation(document: dict[str, Any], backend: Backend, prep: Preparation, image: Any) -> None:
    service: dict[str, Any] = {
        "image": image(prep.image),
        "user": f"{prep.uid or WORKLOAD_UID}:{prep.uid or WORKLOAD_UID}",
    }
    # Compose runs `entrypoint` followed by `command`: the guard, then the step's own command line.
    _entry(service, unless_ready(prep), prep.args)
    service["environment"] = dict(prep.env)
    if prep.secrets:
        service["secrets"] = _secrets(document, prep.secrets)
    if prep.files:
        assert prep.files_mount is not None
        service["configs"] = _configs(document, backend.name, prep.files, prep.files_mount)
    service["volumes"] = _volumes(backend, read_write=True)[:1]
    service["tmpfs"] = ["/tmp"]
    r = prep.resources
    service["deploy"] = {"resources": {"limits": limits(r.cpu_limit or r.cpu, r.memory_limit or r.memory)}}
    # One shot: it finds the ready file and exits at once, or readies the model; the server starts after.
    service["restart"] = f"on-failure:{prep.retries}"
    document["services"][prep.name] = hardened(service)


def unless_ready(prep: Preparation) -> tuple[str, ...]:
    """The step's command (its arguments follow), run only while its ready file is missing.

    `compose up` runs the step at every boot. The ready file is named by the step's key (the
    conversion's manifest inside `/models/<key>/`, Ollama's `.ready-<key>`) and written last, so once
    it exists the data disk holds what the configuration asks for: the server starts without the hub
    (or registry) being reachable, and a hub revision that moved since is never looked up again. A
    new key (another model or revision) names a file that does not exist yet, so it runs.
    """
    assert prep.command is not None, f"{prep.name}: a preparation on the VM names its command"
    guard = (
        f"if [ -f {shlex.quote(prep.ready_file)} ]; then\n"
        f"  echo {shlex.quote(f'{prep.ready_file} exists: {prep.name} has nothing to do')}\n"
        "  exit 0\n"
        "fi\n"
        'exec "$@"\n'
    )
    return ("/bin/sh", "-c", guard, prep.name, *prep.command)


def _add_web_ui(document: dict[str, Any], backends: list[Backend]) -> None:
    urls = ";".join(f"http://{b.name}:{b.port}/v1" for b in backends)
    _secrets(document, (SecretFile(API_KEYS_FILE),))
    document["secrets"][WEBUI_SECRET] = {"file": host_path(WEBUI_SECRET_KEY_FILE)}
    keys = ";".join(["$OPENAI_KEY"] * len(backends))
    script = (
        "set -eu\n"
        f'OPENAI_KEY="$(head -n 1 {MOUNTED_SECRETS}/{API_KEYS_FILE})"\n'
        f'[ -n "$OPENAI_KEY" ] || {{ echo "no API key in {MOUNTED_SECRETS}/{API_KEYS_FILE}" >&2; exit 1; }}\n'
        f'export OPENAI_API_KEYS="{keys}"\n'
        f'export WEBUI_SECRET_KEY="$(cat {MOUNTED_SECRETS}/{WEBUI_SECRET})"\n' + open_webui.serve()
    )
    # As on Kubernetes: the workload user, a read-only root filesystem, and writable only its data
    # folder and the tmpfs mounts (infra/open_webui.py says what it writes where).
    document["services"]["webui"] = hardened(
        {
            "image": OPEN_WEBUI_IMAGE,
            "user": USER,
            "entrypoint": ["/bin/sh", "-c", script],
            "environment": {
                **open_webui.ENV,
                "WEBUI_AUTH": "True",
                "ENABLE_OLLAMA_API": "False",
                "OPENAI_API_BASE_URLS": urls,
                "PORT": str(WEBUI_PORT),
                "SCARF_NO_ANALYTICS": "true",
                "DO_NOT_TRACK": "true",
                "ANONYMIZED_TELEMETRY": "false",
            },
            "secrets": [API_KEYS_FILE, WEBUI_SECRET],
            "volumes": [f"{DATA_DIR}/{WEBUI_FOLDER}:{open_webui.DATA_DIR}"],
            "tmpfs": [open_webui.TMP_DIR, open_webui.STATIC_DIR],
            "healthcheck": {
                "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{WEBUI_PORT}/health"],
                "interval": "30s",
                "timeout": "10s",
                "retries": 3,
                "start_period": "5m",
            },
            "restart": "unless-stopped",
        }
    )

"""The Compose project the VM runs. The serving layer adds the backends; this holds a status
service (so the boot path is exercised end to end) and, when the ONNX backend is enabled, the
one-shot model conversion that must finish before the ONNX server starts."""

from __future__ import annotations

from typing import Any

import yaml

from infra.config import StackSettings
from infra.conversion_plan import conversion_spec, converter_arguments

# Pinned by version; the VM pulls it from Docker Hub at boot.
STATUS_IMAGE = "busybox:1.37.0"
DATA_DIR = "/var/lib/slm-serving"
MODELS_DIR = f"{DATA_DIR}/models"
HF_TOKEN_FILE = "/run/slm-serving/secrets/hf_token"  # noqa: S105 (a path)
CONVERTER_UID = 10001


def _hardened(service: dict[str, Any]) -> dict[str, Any]:
    return {
        **service,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
    }


def compose_project(settings: StackSettings, converter_image: str) -> str:
    services: dict[str, Any] = {
        "status": _hardened(
            {
                "image": STATUS_IMAGE,
                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                "user": "65534:65534",
                # Loopback only: nothing but the TLS proxy (serving layer) listens publicly.
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
    }
    onnx = settings.backends.onnx
    if onnx.enabled:
        target = onnx.conversion_target
        key = conversion_spec(onnx.conversion, target).key()
        services["convert"] = _hardened(
            {
                "image": converter_image,
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
        document["secrets"] = {"hf_token": {"file": HF_TOKEN_FILE}}
    return yaml.safe_dump(document, sort_keys=False)

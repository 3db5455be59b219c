"""The Compose project the VM runs. The serving layer adds the backends; this holds a status
service (so the boot path is exercised end to end) and, when the ONNX backend is enabled, the
one-shot model conversion that must finish before the ONNX server starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.config import StackSettings
from infra.conversion_plan import conversion_spec, converter_arguments

# Pinned by version; the VM pulls them at boot.
STATUS_IMAGE = "busybox:1.37.0"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.2"
GRAFANA_IMAGE = "grafana/grafana:11.2.2"
NODE_EXPORTER_IMAGE = "prom/node-exporter:v1.8.2"
DCGM_EXPORTER_IMAGE = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.8-3.6.0-ubuntu22.04"
MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
SECRETS_GROUP = "10001"  # the group that may read the tmpfs secrets
GRAFANA_PASSWORD_FILE = "/run/slm-serving/secrets/grafana_admin_password"  # noqa: S105 (a path)
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
    _add_monitoring(document, settings)
    return yaml.safe_dump(document, sort_keys=False)


def _prometheus_config(settings: StackSettings) -> str:
    targets = {"slm-node": "node-exporter:9100"}
    if settings.vm.has_gpu:
        targets["slm-dcgm"] = "dcgm-exporter:9400"
    # The serving layer names its backend services after the backends, each on port 8000.
    for name in settings.backends.enabled():
        if name != "ollama":  # Ollama has no /metrics; the proxy measures it
            targets[f"slm-{name}"] = f"{name}:8000"
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "30s"},
        "rule_files": ["/etc/prometheus/rules/*.yml"],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [t]}]} for job, t in targets.items()],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _file_configs(
    configs: dict[str, Any], folder: str, pattern: str, prefix: str, target_dir: str
) -> list[dict[str, str]]:
    """monitoring/<folder>/<pattern> as Compose configs named <prefix>-<stem>; returns their mounts."""
    mounts = []
    for path in sorted((MONITORING / folder).glob(pattern)):
        configs[f"{prefix}-{path.stem}"] = {"content": path.read_text()}
        mounts.append({"source": f"{prefix}-{path.stem}", "target": f"{target_dir}/{path.name}"})
    return mounts


def _add_monitoring(document: dict[str, Any], settings: StackSettings) -> None:
    """Prometheus, Grafana, node exporter (and DCGM on GPU sizes), with the same rules and dashboards
    as the Kubernetes targets, all on loopback only."""
    services, configs = document["services"], document.setdefault("configs", {})
    configs["prometheus"] = {"content": _prometheus_config(settings)}
    rule_mounts = _file_configs(configs, "rules", "*.yml", "rules", "/etc/prometheus/rules")
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
    dashboard_mounts = _file_configs(configs, "dashboards", "*.json", "dashboard", "/etc/dashboards")
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
    document.setdefault("secrets", {})["grafana_admin_password"] = {"file": GRAFANA_PASSWORD_FILE}
    document["volumes"] = {"prometheus-data": {}, "grafana-data": {}}

"""The VM's monitoring: Prometheus with the same rules and dashboards as the Kubernetes targets plus
the thresholds rendered from the config, Grafana, node exporter (and DCGM on GPU sizes), all on
loopback only; Alertmanager when receivers are configured."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from infra import images
from infra.backends.description import Backend
from infra.config import StackSettings
from infra.conventions import JOBS
from infra.monitoring_files import alertmanager_config, dashboards, target_rule_files
from infra.vm.caddy import PROXY_METRICS_PORT
from infra.vm.secrets import (
    GRAFANA_PASSWORD_FILE,
    MOUNTED_SECRETS,
    SECRETS_GROUP,
    host_path,
    webhook_file,
    webhook_receivers,
)
from infra.vm.services import hardened

PROMETHEUS_IMAGE = images.PROMETHEUS
GRAFANA_IMAGE = images.GRAFANA
NODE_EXPORTER_IMAGE = images.NODE_EXPORTER
DCGM_EXPORTER_IMAGE = images.DCGM_EXPORTER
# Runs only when receivers are configured.
ALERTMANAGER_IMAGE = images.ALERTMANAGER
# The users the images are built for, stated so that none runs as root by omission.
NOBODY = "65534:65534"
GRAFANA_USER = "472:472"


ALERTMANAGER_PORT = 9093


def _prometheus_config(settings: StackSettings, backends: Sequence[Backend]) -> str:
    """Scrape jobs named as on Kubernetes (infra/conventions): the node, the GPUs, every backend with
    its own /metrics, and the proxy, which measures every backend."""
    targets = {JOBS["node"]: "node-exporter:9100"}
    if settings.vm.has_gpu:
        targets[JOBS["dcgm"]] = "dcgm-exporter:9400"
    # Compose names each backend's service after it; one without /metrics is measured by the proxy.
    for backend in backends:
        if backend.metrics is not None:
            targets[backend.metrics.job] = f"{backend.name}:{backend.port}"
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


def add_monitoring(document: dict[str, Any], settings: StackSettings, backends: Sequence[Backend]) -> None:
    """Prometheus, Grafana, node exporter (and DCGM on GPU sizes), with the same rules and dashboards
    as the Kubernetes targets plus the thresholds rendered from the config, all on loopback only;
    Alertmanager when receivers are configured."""
    services, configs = document["services"], document.setdefault("configs", {})
    configs["prometheus"] = {"content": _prometheus_config(settings, backends)}
    rule_mounts = _file_configs(configs, target_rule_files(settings), "rules", "/etc/prometheus/rules")
    services["prometheus"] = hardened(
        {
            "image": PROMETHEUS_IMAGE,
            "user": NOBODY,
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
    services["grafana"] = hardened(
        {
            "image": GRAFANA_IMAGE,
            "user": GRAFANA_USER,
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
    services["node-exporter"] = hardened(
        {
            "image": NODE_EXPORTER_IMAGE,
            # Reads the host's /proc and root filesystem (read-only) without privileges.
            "user": NOBODY,
            "command": ["--path.rootfs=/host"],
            "pid": "host",
            "volumes": ["/:/host:ro,rslave"],
            "restart": "unless-stopped",
        }
    )
    if settings.vm.has_gpu:
        services["dcgm-exporter"] = hardened(
            {
                "image": DCGM_EXPORTER_IMAGE,
                # The one service left as its image's root user: DCGM's host engine opens the NVIDIA
                # devices and profiling counters (as the DCGM exporter chart runs it on Kubernetes).
                "user": "0:0",
                "deploy": {
                    "resources": {
                        "reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
                    }
                },
                "restart": "unless-stopped",
            }
        )
    document["secrets"]["grafana_admin_password"] = {"file": host_path(GRAFANA_PASSWORD_FILE)}
    document["volumes"] = volumes


def _add_alertmanager(document: dict[str, Any], settings: StackSettings) -> None:
    """Alertmanager sends every alert to every configured receiver. Its configuration holds no secret:
    each webhook URL is a Compose secret (fetched from Key Vault at boot) it reads with `url_file`, and
    email goes through the configured relay without credentials."""
    document["configs"]["alertmanager"] = {"content": alertmanager_config(settings, url_file_dir=MOUNTED_SECRETS)}
    mounts = []
    for receiver in webhook_receivers(settings):
        # Named apart from the other Compose secrets; mounted at /run/secrets/<receiver>.
        document["secrets"][f"webhook-{receiver}"] = {"file": host_path(webhook_file(receiver))}
        mounts.append({"source": f"webhook-{receiver}", "target": receiver})
    service: dict[str, Any] = {"image": ALERTMANAGER_IMAGE, "user": NOBODY}
    if mounts:
        # The tmpfs secrets are readable by the shared group only.
        service.update({"group_add": [SECRETS_GROUP], "secrets": mounts})
    document["services"]["alertmanager"] = hardened(
        {
            **service,
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

"""The monitoring files every target loads: the shared rule files and Grafana dashboards from
monitoring/, plus the rules rendered from the stack config (alert thresholds, GPU prices, and on the
VM its size), and Alertmanager's configuration from the configured receivers. Pure functions of the
settings: Kubernetes (PrometheusRule objects, dashboard ConfigMaps) and the VM (Compose configs) load
the same text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from infra.config import StackSettings

MONITORING = Path(__file__).resolve().parent.parent / "monitoring"
THRESHOLDS_FILE = "thresholds.rules.yml"
THRESHOLDS_GROUP = "slm-serving.thresholds"
PRICES_GROUP = "slm-serving.prices"
STARTUP_RECORD = "slm:threshold:startup_seconds"

# Shared rule groups that read something not every stack has: group -> what it needs. A stack without
# one of them does not load the group (target_rule_files), so no rule waits for an input it can never
# have; every other group reads only the backends, the gateway and Prometheus itself (every stack).
KUBE_STATE_METRICS = "kube-state-metrics"
DCGM_EXPORTER = "dcgm-exporter"
CERT_MANAGER = "cert-manager"
GPU_PRICES = "GPU prices (monitoring.gpuHourlyUsd)"
RULE_GROUP_INPUTS: dict[str, tuple[str, ...]] = {
    "slm-serving.kubernetes-alerts": (KUBE_STATE_METRICS,),
    "slm-serving.node-sizes": (KUBE_STATE_METRICS,),
    "slm-serving.gpu-alerts": (DCGM_EXPORTER,),
    "slm-serving.gpu": (DCGM_EXPORTER,),
    "slm-serving.cost": (DCGM_EXPORTER, GPU_PRICES),
    "slm-serving.certificate-alerts": (CERT_MANAGER,),
}


def _number(value: float) -> str:
    return repr(float(value))


def threshold_rules(settings: StackSettings) -> str:
    """thresholds.rules.yml: each alert threshold as `slm:threshold:<name>`, each enabled backend's
    startup budget as `slm:threshold:startup_seconds{backend}`, each configured GPU price as
    `slm:gpu_hourly_usd{vm_size}` and, on the VM, the VM's size for every GPU host its DCGM exporter
    reports (`slm:node_vm_size:info`; on Kubernetes a shared rule reads it from the nodes)."""
    thresholds = settings.monitoring.thresholds.model_dump()
    rules: list[dict[str, Any]] = [
        {"record": f"slm:threshold:{name}", "expr": f"vector({_number(value)})"} for name, value in thresholds.items()
    ]
    # BackendNotReady compares a pod's age with its own backend's budget (backends.<name>.startupMinutes),
    # the same budget its startup probe and the VM's healthcheck start_period allow.
    rules += [
        {
            "record": STARTUP_RECORD,
            "expr": f"vector({_number(config.startup_minutes * 60)})",
            "labels": {"backend": name},
        }
        for name, config in settings.backends.enabled().items()
    ]
    groups: list[dict[str, Any]] = [{"name": THRESHOLDS_GROUP, "rules": rules}]
    prices: list[dict[str, Any]] = [
        {"record": "slm:gpu_hourly_usd", "expr": f"vector({_number(usd)})", "labels": {"vm_size": size}}
        for size, usd in sorted(settings.monitoring.gpu_hourly_usd.items())
    ]
    if settings.target == "vm" and settings.vm.has_gpu:
        # One Prometheus per VM: every GPU host it sees is this VM.
        prices.append(
            {
                "record": "slm:node_vm_size:info",
                "expr": "group by (Hostname) (DCGM_FI_DEV_GPU_UTIL)",
                "labels": {"vm_size": settings.vm.size},
            }
        )
    if prices:
        groups.append({"name": PRICES_GROUP, "rules": prices})
    header = "# Rendered from the stack config by infra/monitoring_files.py; do not edit.\n"
    return header + yaml.safe_dump({"groups": groups}, sort_keys=False)


def shared_rule_files() -> dict[str, str]:
    """monitoring/rules/*.rules.yml: the same on every target."""
    return {path.name: path.read_text() for path in sorted((MONITORING / "rules").glob("*.rules.yml"))}


def rule_files(settings: StackSettings) -> dict[str, str]:
    """File name -> YAML text: the shared rule files and the rendered thresholds file."""
    shared = shared_rule_files()
    assert THRESHOLDS_FILE not in shared, f"monitoring/rules/{THRESHOLDS_FILE} would shadow the rendered file"
    return {**shared, THRESHOLDS_FILE: threshold_rules(settings)}


def rule_inputs(settings: StackSettings) -> frozenset[str]:
    """What the stack has of RULE_GROUP_INPUTS. Kubernetes: kube-state-metrics always
    (kube-prometheus-stack's, or the cluster's own Prometheus stack's with `monitoring.install: false`),
    cert-manager when the stack installs it (its ServiceMonitor is ours, infra/k8s/monitoring.py). The VM
    runs neither: Caddy renews its certificates itself and reports no expiry. Both: the DCGM exporter
    where a GPU is, and GPU prices when configured."""
    inputs: set[str] = set()
    if settings.monitoring.gpu_hourly_usd:
        inputs.add(GPU_PRICES)
    if settings.target == "vm":
        if settings.vm.has_gpu:
            inputs.add(DCGM_EXPORTER)
        return frozenset(inputs)
    inputs.add(KUBE_STATE_METRICS)
    if settings.uses_gpu:
        inputs.add(DCGM_EXPORTER)
    if settings.addons.cert_manager:
        inputs.add(CERT_MANAGER)
    return frozenset(inputs)


def unloaded_groups(settings: StackSettings) -> dict[str, tuple[str, ...]]:
    """Shared rule groups the stack does not load: group -> what it needs and the stack lacks."""
    present = rule_inputs(settings)
    unloaded = {group: tuple(n for n in needs if n not in present) for group, needs in RULE_GROUP_INPUTS.items()}
    return {group: lacking for group, lacking in unloaded.items() if lacking}


def target_rule_files(settings: StackSettings) -> dict[str, str]:
    """The rule files the stack loads: rule_files without the groups whose input it lacks
    (unloaded_groups); a file that lost a group names it in its header."""
    unloaded = unloaded_groups(settings)
    files = rule_files(settings)
    for name, text in files.items():
        groups = yaml.safe_load(text)["groups"]
        dropped = [g["name"] for g in groups if g["name"] in unloaded]
        if not dropped:
            continue
        header = "".join(f"# Not loaded on this target: {g} (needs {', '.join(unloaded[g])}).\n" for g in dropped)
        kept = [g for g in groups if g["name"] not in unloaded]
        files[name] = header + yaml.safe_dump({"groups": kept}, sort_keys=False)
    return files


def dashboards() -> dict[str, str]:
    """File name -> Grafana dashboard JSON, from monitoring/dashboards/."""
    return {path.name: path.read_text() for path in sorted((MONITORING / "dashboards").glob("*.json"))}


def alertmanager_document(settings: StackSettings, url_file_dir: str | None = None) -> dict[str, Any]:
    """Alertmanager's configuration: every alert goes to every configured receiver (webhook or email,
    resolved notices included); without receivers, alerts stay in Prometheus and Alertmanager.

    With `url_file_dir`, a webhook's URL (a credential: Slack and Teams put the token in it) is read
    from `<dir>/<receiver>` instead of being written into the configuration."""
    monitoring = settings.monitoring
    receivers: list[dict[str, Any]] = [{"name": "none"}]
    for receiver in monitoring.receivers:
        if receiver.webhook_url is not None:
            target = {"url_file": f"{url_file_dir}/{receiver.name}"} if url_file_dir else {"url": receiver.webhook_url}
            receivers.append({"name": receiver.name, "webhook_configs": [{**target, "send_resolved": True}]})
        else:
            receivers.append(
                {"name": receiver.name, "email_configs": [{"to": receiver.email_to, "send_resolved": True}]}
            )
    config: dict[str, Any] = {}
    if any(r.email_to for r in monitoring.receivers):
        config["global"] = {
            "smtp_smarthost": monitoring.smtp_smarthost,
            "smtp_from": monitoring.smtp_from,
            "smtp_require_tls": True,
        }
    config["route"] = {
        "receiver": "none",
        "group_by": ["alertname", "job", "backend"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "4h",
        "routes": [{"receiver": r.name, "continue": True} for r in monitoring.receivers],
    }
    config["receivers"] = receivers
    return config


def alertmanager_config(settings: StackSettings, url_file_dir: str | None = None) -> str:
    """The VM's alertmanager.yml (webhook URLs read from `<url_file_dir>/<receiver>` when given)."""
    return yaml.safe_dump(alertmanager_document(settings, url_file_dir), sort_keys=False)

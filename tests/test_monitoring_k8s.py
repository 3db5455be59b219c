"""Monitoring on the Kubernetes targets, from the offline render: kube-prometheus-stack pinned and
secret-free, monitors that select the backends' and the gateway's real labels and ports, the shared
rules and dashboards carried verbatim, DCGM on GPU nodes, receivers as secrets, and the switch."""

from __future__ import annotations

import json
from typing import Any

import yaml

from infra.k8s.gateway import PROXY_NAMESPACE, PROXY_POD_LABELS
from infra.monitoring_files import dashboards, target_rule_files
from offline import recording
from tests.conftest import run_stack
from tests.test_compose import settings_for
from tests.test_serving_manifests import kinds, one

CHART = "kubernetes:helm.sh/v4:Chart"


def _chart(rec: recording.Recording, chart: str) -> recording.Registration | None:
    return next((r for r in rec.resources if r.type == CHART and r.inputs["chart"] == chart), None)


def test_kube_prometheus_stack_is_pinned_and_its_values_hold_no_secret(rendered: Any) -> None:
    rec = rendered("prod")
    chart = _chart(rec, "kube-prometheus-stack")
    assert chart is not None and chart.inputs["version"] == "79.7.1"
    values = chart.inputs["values"]
    assert not recording.contains_secret(values)
    assert values["grafana"]["admin"] == {
        "existingSecret": "grafana-admin",
        "userKey": "admin-user",
        "passwordKey": "admin-password",
    }
    spec = values["prometheus"]["prometheusSpec"]
    assert spec["ruleSelectorNilUsesHelmValues"] is False and spec["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert values["grafana"]["sidecar"]["dashboards"]["label"] == "grafana_dashboard"


def test_grafana_password_is_generated_kept_in_a_secret_and_exported_as_one(rendered: Any) -> None:
    rec = rendered("prod")
    secret = next(
        r for r in rec.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == "grafana-admin"
    )
    assert recording.contains_secret(secret.inputs["stringData"])
    assert len(secret.plain["stringData"]["admin-password"]) >= 20
    assert isinstance(rec.exports["grafanaAdminPassword"], recording.Secret)
    chart = _chart(rec, "kube-prometheus-stack")
    assert chart is not None and secret.urn in chart.depends_on


def test_service_monitor_selects_the_backends_real_labels_and_ports(rendered: Any) -> None:
    rec = rendered("prod")
    monitor = one(rec, "ServiceMonitor", "slm-serving-backends")["spec"]
    label = monitor["jobLabel"]
    assert monitor["selector"] == {"matchExpressions": [{"key": label, "operator": "Exists"}]}
    assert monitor["endpoints"][0]["port"] == "http" and monitor["endpoints"][0]["path"] == "/metrics"
    services = {m["metadata"]["name"]: m for m in kinds(rec, "Service")}
    selected = {name for name, svc in services.items() if label in svc["metadata"]["labels"]}
    assert selected == {"vllm", "onnx"}  # Ollama has no /metrics
    for name in selected:
        service = services[name]
        # The job names the shared rules and dashboards use (the VM's Prometheus uses the same).
        assert service["metadata"]["labels"][label] == f"slm-{name}"
        assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"} in service["spec"]["ports"]
        # The Service's selector matches the Deployment's pods, which expose port `http`.
        pods = one(rec, "Deployment", name)["spec"]["template"]
        assert service["spec"]["selector"].items() <= pods["metadata"]["labels"].items()
        assert pods["spec"]["containers"][0]["ports"][0]["name"] == "http"


def test_gateway_pod_monitor_selects_the_envoy_proxies(rendered: Any) -> None:
    rec = rendered("prod")
    monitor = one(rec, "PodMonitor", "slm-serving-gateway")
    assert monitor["metadata"]["namespace"] == PROXY_NAMESPACE
    assert monitor["spec"]["selector"] == {"matchLabels": PROXY_POD_LABELS}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/stats/prometheus"
    assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": "slm-gateway"}]
    # The same labels the backends' NetworkPolicy admits the gateway by.
    policy = one(rec, "NetworkPolicy", "allow-clients-to-backends")["spec"]["ingress"][0]["from"][0]
    assert policy["podSelector"]["matchLabels"] == PROXY_POD_LABELS


def test_rules_and_dashboards_carry_the_files_content(rendered: Any) -> None:
    rec = rendered("prod")
    rules = {m["metadata"]["name"]: m["spec"] for m in kinds(rec, "PrometheusRule")}
    files = target_rule_files(settings_for("prod"))
    assert len(rules) == len(files) >= 3
    for name, content in files.items():
        assert rules[f"slm-serving-{name.split('.', 1)[0]}"] == yaml.safe_load(content), name
    maps = {m["metadata"]["name"]: m for m in kinds(rec, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]}
    boards = dashboards()
    assert len(maps) == len(boards) >= 3
    for name, content in boards.items():
        config_map = maps[f"slm-serving-dashboard-{name.removesuffix('.json')}"]
        assert config_map["data"] == {name: content}
        assert config_map["metadata"]["namespace"] == "monitoring"


def test_thresholds_from_config_reach_the_prometheus_rules() -> None:
    rec = run_stack("local", overrides={"monitoring": {"thresholds": {"ttftP95Seconds": 2.5}}})
    thresholds = one(rec, "PrometheusRule", "slm-serving-thresholds")["spec"]
    assert "2.5" in json.dumps(thresholds)


def test_dcgm_exporter_runs_on_gpu_nodes_only_where_gpus_are_used(rendered: Any) -> None:
    chart = _chart(rendered("prod"), "dcgm-exporter")
    assert chart is not None
    values = chart.inputs["values"]
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in values["tolerations"]
    assert values["serviceMonitor"]["relabelings"] == [{"targetLabel": "job", "replacement": "slm-dcgm"}]
    kube_prometheus = _chart(rendered("prod"), "kube-prometheus-stack")
    assert kube_prometheus is not None and kube_prometheus.urn in chart.depends_on  # ServiceMonitor CRD
    assert _chart(rendered("local"), "dcgm-exporter") is None


def test_existing_prometheus_gets_only_monitors_rules_and_dashboards() -> None:
    rec = run_stack("local", overrides={"monitoring": {"install": False}})
    assert _chart(rec, "kube-prometheus-stack") is None
    assert "grafanaAdminPassword" not in rec.exports
    assert kinds(rec, "ServiceMonitor") and kinds(rec, "PodMonitor") and kinds(rec, "PrometheusRule")
    assert [m for m in kinds(rec, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]]


def test_receivers_from_config_with_webhook_urls_kept_secret() -> None:
    url = "https://hooks.example.com/services/T000/B000/not-a-real-token"
    rec = run_stack(
        "local",
        overrides={
            "monitoring": {
                "receivers": [{"name": "oncall", "webhookUrl": url}, {"name": "team", "emailTo": "team@example.com"}],
                "smtpSmarthost": "smtp.example.com:587",
                "smtpFrom": "alerts@example.com",
            }
        },
    )
    chart = _chart(rec, "kube-prometheus-stack")
    assert chart is not None
    values = chart.plain["values"]
    assert url not in json.dumps(values)
    config = values["alertmanager"]["config"]
    names = [r["name"] for r in config["receivers"]]
    assert names == ["none", "oncall", "team"]
    webhook = config["receivers"][1]["webhook_configs"][0]
    assert webhook["url_file"].endswith("/alertmanager-receivers/oncall")
    assert values["alertmanager"]["alertmanagerSpec"]["secrets"] == ["alertmanager-receivers"]
    secret = next(
        r for r in rec.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["name"] == "alertmanager-receivers"
    )
    assert recording.contains_secret(secret.inputs["stringData"])
    assert secret.plain["stringData"]["oncall"] == url
    assert config["global"]["smtp_smarthost"] == "smtp.example.com:587"

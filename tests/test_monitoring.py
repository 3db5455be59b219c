"""Monitoring rules: promtool checks and unit tests, and every metric a rule uses is one a component
really exports (the ONNX server's read from a running server; vLLM's, DCGM's, kube-state-metrics' and
cert-manager's from the lists in monitoring/metrics/, each with its source version)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from infra.recording import PROJECT_ROOT
from tests.server_support import Server

MONITORING = PROJECT_ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/test.py installs it when run as root)",
)
_METRIC = re.compile(
    r"\b(vllm:[a-z_]+|slm:[a-z0-9_:]+|onnx_server_[a-z_]+|DCGM_FI_[A-Z_]+|kube_[a-z_]+|certmanager_[a-z_]+|up)\b"
)
_SUFFIXES = ("_bucket", "_sum", "_count")


def _rules() -> list[dict]:
    return [
        rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]
    ]


def _used_metrics() -> set[str]:
    return {name for rule in _rules() for name in _METRIC.findall(rule["expr"])}


def _documented() -> set[str]:
    names = set()
    for path in (MONITORING / "metrics").glob("*.txt"):
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                names.add(line.strip())
    return names


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@needs_promtool
def test_promtool_checks_every_rule_file() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_failure_and_stays_silent_when_healthy() -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", str(MONITORING / "tests" / "alerts.test.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_documented() -> None:
    tests = yaml.safe_load((MONITORING / "tests" / "alerts.test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} == tested
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]


@pytest.fixture(scope="module")
def onnx_server_metrics(served_model: Path) -> set[str]:
    """Metric names (histograms by base name) a running ONNX server exports after one request."""
    server = Server(served_model)
    try:
        server.post("/v1/completions", json={"model": "phi3-tiny-int4", "prompt": "hi", "max_tokens": 2})
        exposition = httpx.get(server.base + "/metrics").text
    finally:
        server.stop()
    return {_base(line.split("{")[0].split(" ")[0]) for line in exposition.splitlines() if line and line[0] != "#"}


def test_every_metric_is_exported_by_a_component(onnx_server_metrics: set[str]) -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    onnx_server = onnx_server_metrics
    known = _documented() | recorded | onnx_server
    unknown = {name for name in _used_metrics() if _base(name) not in known and name not in known}
    assert unknown == set()
    # The ONNX server really exports every vLLM-named series the rules read.
    vllm_used = {_base(n) for n in _used_metrics() if n.startswith("vllm:")}
    assert vllm_used <= onnx_server, vllm_used - onnx_server


DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
# Grafana variables a query may use, replaced by a value PromQL accepts before parsing.
_VARIABLES = {"$job": ".*", "$node": ".*", "$gpu_node_hourly_price": "1", "${datasource}": ""}


def _dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in _VARIABLES.items():
                    expr = expr.replace(variable, value)
                queries.append((f"{path.stem}: {panel['title']}", expr))
    return queries


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 15
    rules = {
        "groups": [
            {"name": "dashboards", "rules": [{"record": f"q:{i}", "expr": e} for i, (_, e) in enumerate(queries)]}
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_use_only_exported_metrics(onnx_server_metrics: set[str]) -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = _documented() | recorded | onnx_server_metrics
    used = {name for _, expr in _dashboard_queries() for name in _METRIC.findall(expr)}
    assert used and {n for n in used if _base(n) not in known and n not in known} == set()


def test_dashboards_cover_each_backend_view() -> None:
    titles = {
        json.loads(p.read_text())["uid"]: [x["title"] for x in json.loads(p.read_text())["panels"]] for p in DASHBOARDS
    }
    assert set(titles) == {"slm-overview", "slm-gpu", "slm-cost"}
    overview = " ".join(titles["slm-overview"]).lower()
    for word in ("requests/s", "first token", "inter-token", "tokens/s", "queue", "errors", "replicas"):
        assert word in overview

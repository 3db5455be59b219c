"""Monitoring rules: promtool checks and unit tests (with the thresholds file rendered from the default
config, and from other configs to show the thresholds decide what fires), and every metric a rule uses
is one a component really exports (the ONNX server's read from a running server; vLLM's, DCGM's,
kube-state-metrics', cert-manager's, Envoy's and Caddy's from the lists in monitoring/metrics/, each
with its source version)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from infra.config import StackSettings
from infra.monitoring_files import THRESHOLDS_FILE, dashboards, rule_files, threshold_rules
from offline.recording import PROJECT_ROOT
from tests.server_support import Server

MONITORING = PROJECT_ROOT / "monitoring"
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
DEFAULTS = StackSettings(target="cluster")
# monitoring/tests/alerts.test.yml: the default thresholds, and vLLM and the ONNX server with the
# default startup budget (60 minutes), so BackendNotReady has budgets to compare against.
BACKENDS = StackSettings.model_validate(
    {"target": "cluster", "backends": {"vllm": {"enabled": True}, "onnx": {"enabled": True}}}
)
# A GPU VM with prices: the rendered file with every kind of rule it can hold.
PRICED_VM = StackSettings.model_validate(
    {"target": "vm", "monitoring": {"gpuHourlyUsd": {"Standard_NC4as_T4_v3": 0.526, "Standard_NC24ads_A100_v4": 3.67}}}
)
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/test.py installs it when run as root)",
)
_METRIC = re.compile(
    r"\b(vllm:[a-z_]+|slm:[a-z0-9_:]+|onnx_server_[a-z_]+|DCGM_FI_[A-Z_]+|kube_[a-z_]+|certmanager_[a-z_]+"
    r"|envoy_[a-z_]+|caddy_[a-z_]+|up)\b"
)
_SUFFIXES = ("_bucket", "_sum", "_count")


def _rules() -> list[dict]:
    """The shared rules and every rule the stack can render (thresholds, startup budgets, prices, the
    VM's size)."""
    every = PRICED_VM.model_copy(update={"backends": BACKENDS.backends})
    return [
        rule
        for text in rule_files(every).values()
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
    ]


def _write_rules(folder: Path, settings: StackSettings) -> list[Path]:
    paths = []
    for name, text in rule_files(settings).items():
        path = folder / name
        path.write_text(text)
        paths.append(path)
    return paths


def _promtool_test(folder: Path, tests: dict, settings: StackSettings) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` on `tests` with every rule file the stack renders for `settings`."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {**tests, "rule_files": [str(p) for p in _write_rules(folder, settings)]}
    path = folder / "test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression; label matchers and strings (label_replace's label names) aside."""
    return set(_METRIC.findall(re.sub(r'"[^"]*"|\{[^}]*\}', " ", expr)))


def _used_metrics() -> set[str]:
    return {name for rule in _rules() for name in _metric_names(rule["expr"])}


def _documented(pattern: str = "*.txt") -> set[str]:
    names = set()
    for path in (MONITORING / "metrics").glob(pattern):
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
@pytest.mark.parametrize("settings", [DEFAULTS, PRICED_VM], ids=["defaults", "priced-vm"])
def test_promtool_checks_every_rule_file(settings: StackSettings, tmp_path: Path) -> None:
    # promtool's lint also rejects two rules recording the same series.
    paths = _write_rules(tmp_path, settings)
    assert [p.name for p in paths] == [*(p.name for p in RULE_FILES), THRESHOLDS_FILE]
    result = subprocess.run(
        ["promtool", "check", "rules", *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_failure_and_stays_silent_when_healthy(tmp_path: Path) -> None:
    tests = yaml.safe_load((MONITORING / "tests" / "alerts.test.yml").read_text())
    assert tests["rule_files"] == ["../rules/recording.rules.yml", "../rules/alerts.rules.yml"]
    result = _promtool_test(tmp_path, tests, BACKENDS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_documented() -> None:
    tests = yaml.safe_load((MONITORING / "tests" / "alerts.test.yml").read_text())
    cases = [case for t in tests["tests"] for case in t.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} == fires == silent
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"] and alert["annotations"]["runbook"]


def test_thresholds_are_rendered_from_the_config() -> None:
    rendered = yaml.safe_load(threshold_rules(DEFAULTS))
    assert [g["name"] for g in rendered["groups"]] == ["slm-serving.thresholds"]  # no prices, not a VM
    values = {r["record"]: r["expr"] for r in rendered["groups"][0]["rules"]}
    assert values == {
        "slm:threshold:error_ratio": "vector(0.05)",
        "slm:threshold:ttft_p95_seconds": "vector(5.0)",
        "slm:threshold:queue_waiting": "vector(10.0)",
        "slm:threshold:gpu_memory_ratio": "vector(0.95)",
        "slm:threshold:certificate_days": "vector(14.0)",
    }
    # Every threshold is one an alert compares against, keeping the alert's labels.
    alerts = " ".join(rule["expr"] for rule in _rules() if "alert" in rule)
    for record in values:
        assert f"on () group_left () {record}" in alerts or f"on () group_left () ({record}" in alerts, record
    lowered = StackSettings.model_validate({"target": "cluster", "monitoring": {"thresholds": {"ttftP95Seconds": 1.5}}})
    assert "vector(1.5)" in threshold_rules(lowered)
    priced = yaml.safe_load(threshold_rules(PRICED_VM))["groups"][1]
    assert priced["name"] == "slm-serving.prices"
    assert {(r["record"], r["labels"]["vm_size"], r["expr"]) for r in priced["rules"]} == {
        ("slm:gpu_hourly_usd", "Standard_NC24ads_A100_v4", "vector(3.67)"),
        ("slm:gpu_hourly_usd", "Standard_NC4as_T4_v3", "vector(0.526)"),
        ("slm:node_vm_size:info", "Standard_NC4as_T4_v3", "group by (Hostname) (DCGM_FI_DEV_GPU_UTIL)"),
    }


# Time to first token p95 = 1 + 0.95 * 1.5 = 2.425 s on slm-onnx; 1% of vLLM's requests fail.
_THRESHOLD_SERIES = [
    {"series": 'vllm:time_to_first_token_seconds_bucket{job="slm-onnx", model_name="phi4", le="1"}', "values": "0x30"},
    {
        "series": 'vllm:time_to_first_token_seconds_bucket{job="slm-onnx", model_name="phi4", le="2.5"}',
        "values": "0+10x30",
    },
    {
        "series": 'vllm:time_to_first_token_seconds_bucket{job="slm-onnx", model_name="phi4", le="+Inf"}',
        "values": "0+10x30",
    },
    {
        "series": 'envoy_cluster_upstream_rq_total{envoy_cluster_name="httproute/slm-serving/vllm/rule/0"}',
        "values": "0+100x30",
    },
    {
        "series": 'envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",'
        ' envoy_cluster_name="httproute/slm-serving/vllm/rule/0"}',
        "values": "0+1x30",
    },
]


def _runbook(alert: str) -> str:
    return next(rule["annotations"]["runbook"] for rule in _rules() if rule.get("alert") == alert)


def _threshold_tests(fires: bool) -> dict:
    ttft = [
        {
            "exp_labels": {"severity": "warning", "job": "slm-onnx", "model_name": "phi4"},
            "exp_annotations": {
                "summary": "slm-onnx: time to first token p95 is 2.4s",
                "runbook": _runbook("SlowTimeToFirstToken"),
            },
        }
    ]
    errors = [
        {
            "exp_labels": {"severity": "warning", "backend": "vllm"},
            "exp_annotations": {
                "summary": "vllm answers 1% of requests through the gateway with a server error",
                "runbook": _runbook("HighErrorRate"),
            },
        }
    ]
    return {
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": _THRESHOLD_SERIES,
                "alert_rule_test": [
                    {"alertname": "SlowTimeToFirstToken", "eval_time": "20m", "exp_alerts": ttft if fires else []},
                    {"alertname": "HighErrorRate", "eval_time": "20m", "exp_alerts": errors if fires else []},
                ],
            }
        ],
    }


@needs_promtool
def test_thresholds_from_the_config_decide_what_fires(tmp_path: Path) -> None:
    """The same series: silent with the default thresholds (5 s, 5%), firing with a stack's lower ones."""
    default = _promtool_test(tmp_path / "defaults", _threshold_tests(fires=False), DEFAULTS)
    assert default.returncode == 0, default.stdout + default.stderr
    strict = StackSettings.model_validate(
        {"target": "cluster", "monitoring": {"thresholds": {"ttftP95Seconds": 2.0, "errorRatio": 0.005}}}
    )
    lowered = _promtool_test(tmp_path / "strict", _threshold_tests(fires=True), strict)
    assert lowered.returncode == 0, lowered.stdout + lowered.stderr
    # And the default expectation fails with the lowered thresholds: the test can tell them apart.
    assert _promtool_test(tmp_path / "cross", _threshold_tests(fires=False), strict).returncode != 0


def test_startup_budgets_are_rendered_per_enabled_backend() -> None:
    settings = StackSettings.model_validate(
        {"target": "vm", "backends": {"vllm": {"enabled": True, "startupMinutes": 90}, "ollama": {"enabled": True}}}
    )
    rules = yaml.safe_load(threshold_rules(settings))["groups"][0]["rules"]
    budgets = {r["labels"]["backend"]: r["expr"] for r in rules if r["record"] == "slm:threshold:startup_seconds"}
    assert budgets == {"vllm": "vector(5400.0)", "ollama": "vector(3600.0)"}


def _not_ready_tests(eval_minutes: int, fires: bool) -> dict:
    """vLLM's pod, started at 0, never ready; BackendNotReady at `eval_minutes`."""
    pod = "vllm-5d8f7c9b4-x2k7p"
    series = [
        {"series": f'kube_pod_start_time{{namespace="slm-serving", pod="{pod}"}}', "values": "0x120"},
        {
            "series": f'kube_pod_status_ready{{namespace="slm-serving", pod="{pod}", condition="true"}}',
            "values": "0x120",
        },
        {
            "series": f'kube_pod_status_phase{{namespace="slm-serving", pod="{pod}", phase="Running"}}',
            "values": "1x120",
        },
    ]
    labels = {"severity": "warning", "namespace": "slm-serving", "pod": pod, "backend": "vllm"}
    case = {"alertname": "BackendNotReady", "eval_time": f"{eval_minutes}m", "exp_alerts": []}
    if fires:
        hours, minutes = divmod(eval_minutes, 60)
        age = f"{hours}h {minutes}m 0s" if hours else f"{minutes}m 0s"
        summary = f"{pod} is not ready {age} after it started, beyond the vllm backend's startup budget"
        annotations = {"summary": summary, "runbook": _runbook("BackendNotReady")}
        case["exp_alerts"] = [{"exp_labels": labels, "exp_annotations": annotations}]
    return {
        "evaluation_interval": "30s",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [case]}],
    }


@needs_promtool
@pytest.mark.parametrize(("minutes", "silent_at", "fires_at"), [(20, 20, 22), (60, 60, 62), (90, 90, 92)])
def test_backend_not_ready_waits_for_the_configured_startup_budget(
    tmp_path: Path, minutes: int, silent_at: int, fires_at: int
) -> None:
    """Silent until the backend's own budget (backends.<name>.startupMinutes) is over, firing after."""
    settings = StackSettings.model_validate(
        {"target": "cluster", "backends": {"vllm": {"enabled": True, "startupMinutes": minutes}}}
    )
    silent = _promtool_test(tmp_path / "silent", _not_ready_tests(silent_at, fires=False), settings)
    assert silent.returncode == 0, silent.stdout + silent.stderr
    fires = _promtool_test(tmp_path / "fires", _not_ready_tests(fires_at, fires=True), settings)
    assert fires.returncode == 0, fires.stdout + fires.stderr
    # A backend that is not enabled has no budget: its pods never alert.
    off = _promtool_test(tmp_path / "off", _not_ready_tests(fires_at, fires=False), DEFAULTS)
    assert off.returncode == 0, off.stdout + off.stderr


@needs_promtool
def test_gpu_cost_joins_nodes_with_their_size_and_price(tmp_path: Path) -> None:
    """Kubernetes: the size from kube_node_labels; the VM: the size the stack knows. A size without a
    price leaves its node out of the spend (the cost dashboard counts such nodes)."""
    dcgm = [
        {"series": f'DCGM_FI_DEV_GPU_UTIL{{Hostname="{host}", gpu="{gpu}"}}', "values": "50x20"}
        for host, gpu in (("aks-t4-0", "0"), ("aks-a100-0", "0"), ("aks-a100-0", "1"), ("aks-h100-0", "0"))
    ]
    labels = [
        {
            "series": f'kube_node_labels{{node="{node}", label_node_kubernetes_io_instance_type="{size}"}}',
            "values": "1x20",
        }
        for node, size in (
            ("aks-t4-0", "Standard_NC4as_T4_v3"),
            ("aks-a100-0", "Standard_NC24ads_A100_v4"),
            ("aks-h100-0", "Standard_NC40ads_H100_v5"),
            ("aks-system-0", "Standard_D4s_v5"),
        )
    ]
    prices = {"Standard_NC4as_T4_v3": 0.526, "Standard_NC24ads_A100_v4": 3.67}
    cluster = StackSettings.model_validate({"target": "cluster", "monitoring": {"gpuHourlyUsd": prices}})
    expected = [
        {"labels": 'slm:gpu_node_hourly_usd{Hostname="aks-a100-0", vm_size="Standard_NC24ads_A100_v4"}', "value": 3.67},
        {"labels": 'slm:gpu_node_hourly_usd{Hostname="aks-t4-0", vm_size="Standard_NC4as_T4_v3"}', "value": 0.526},
    ]
    tests = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": dcgm + labels,
                "promql_expr_test": [{"expr": "slm:gpu_node_hourly_usd", "eval_time": "10m", "exp_samples": expected}],
            }
        ],
    }
    result = _promtool_test(tmp_path / "cluster", tests, cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    vm_series = [{"series": 'DCGM_FI_DEV_GPU_UTIL{Hostname="4f2a9c", gpu="0"}', "values": "50x20"}]
    vm_expected = [
        {"labels": 'slm:gpu_node_hourly_usd{Hostname="4f2a9c", vm_size="Standard_NC4as_T4_v3"}', "value": 0.526}
    ]
    vm = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": vm_series,
                "promql_expr_test": [
                    {"expr": "slm:gpu_node_hourly_usd", "eval_time": "10m", "exp_samples": vm_expected}
                ],
            }
        ],
    }
    result = _promtool_test(tmp_path / "vm", vm, PRICED_VM)
    assert result.returncode == 0, result.stdout + result.stderr


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
    # The gateway rules read Envoy's names (Kubernetes) and Caddy's (the VM) from their own lists.
    for component in ("envoy", "caddy"):
        used = {_base(n) for n in _used_metrics() if n.startswith(f"{component}_")}
        assert used and used <= _documented(f"{component}.txt"), used - _documented(f"{component}.txt")
    # The ONNX server really exports every vLLM-named series the rules read.
    vllm_used = {_base(n) for n in _used_metrics() if n.startswith("vllm:")}
    assert vllm_used <= onnx_server, vllm_used - onnx_server


DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))
# Grafana variables a query may use, replaced by a value PromQL accepts before parsing.
_VARIABLES = {"$job": ".*", "$node": ".*", "$backend": ".*", "${datasource}": ""}


def _dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for name, text in dashboards().items():
        for panel in json.loads(text)["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in _VARIABLES.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr.replace("$1", ""), (name, expr)  # an unknown variable
                queries.append((f"{name}: {panel['title']}", expr))
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
    used = {name for _, expr in _dashboard_queries() for name in _metric_names(expr)}
    assert used and {n for n in used if _base(n) not in known and n not in known} == set()


def test_dashboards_cover_each_backend_view() -> None:
    titles = {
        json.loads(p.read_text())["uid"]: [x["title"] for x in json.loads(p.read_text())["panels"]] for p in DASHBOARDS
    }
    assert set(titles) == {"slm-overview", "slm-gpu", "slm-cost"}
    overview = " ".join(titles["slm-overview"]).lower()
    for word in ("requests/s", "first token", "inter-token", "tokens/s", "queue", "errors", "replicas", "ollama"):
        assert word in overview
    # Per backend through the gateway, Ollama among them.
    queries = [expr for title, expr in _dashboard_queries() if title.startswith("overview.json")]
    for series in (
        "slm:gateway_requests:rate5m",
        "slm:gateway_request_seconds:p95_5m",
        "slm:gateway_errors:ratio_rate5m",
    ):
        assert any(series in q for q in queries), series


def test_gpu_prices_come_from_the_config_not_a_dashboard_constant() -> None:
    cost = json.loads(dashboards()["cost.json"])
    assert [v["name"] for v in cost["templating"]["list"]] == ["datasource"]
    spend = [expr for title, expr in _dashboard_queries() if title.startswith("cost.json") and "spend" in title.lower()]
    assert len(spend) >= 2 and all("slm:gpu_node_hourly_usd" in q for q in spend)

"""A real Prometheus on loopback scrapes a real ONNX server as job slm-onnx, with every rule file the
stack loads (the shared ones and the thresholds rendered from the config): the metric names dashboards,
alerts and autoscaling use (vLLM's) are there, every rule evaluates, and a stopped server makes
BackendDown pending."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from infra.config import StackSettings
from infra.conventions import backend_job
from infra.monitoring_files import rule_files
from tests.server_support import Server, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus not installed (Debian package `prometheus`; scripts/test.py installs it when run as root)",
    ),
]
MODEL = "phi3-tiny-int4"
# What the dashboards, alerts and KEDA triggers query (README: metric mapping).
DASHBOARD_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "onnx_server_requests_total",
}
T = TypeVar("T")


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        reply = httpx.get(f"{self.base}/api/v1/{path}", params=params, timeout=5)
        reply.raise_for_status()
        return reply.json()["data"]


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except httpx.HTTPError as error:
            last = error
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout}s; last: {last!r}")


@pytest.fixture
def server(tiny_int4: Path) -> Iterator[Server]:
    running = Server(tiny_int4)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def prometheus(server: Server, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the server every second, evaluating every rule group every second (the
    groups' own 30 s and 1 m intervals dropped), with the default config's thresholds."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in rule_files(StackSettings(target="cluster")).items():
        document = yaml.safe_load(text)
        for group in document["groups"]:
            group.pop("interval", None)
        (rules / name).write_text(yaml.safe_dump(document, sort_keys=False))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules / "*.yml")],
                "scrape_configs": [
                    {"job_name": backend_job("onnx"), "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}
                ],
            }
        )
    )
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(30)


def test_prometheus_scrapes_the_server(server: Server, prometheus: Prometheus) -> None:
    for i in range(3):
        server.post("/v1/completions", json={"model": MODEL, "prompt": f"hello {i}", "max_tokens": 5})

    def names() -> set[str] | None:
        found = set(prometheus.api("label/__name__/values"))
        return found if found >= DASHBOARD_METRICS else None

    wait_for(names, 60, f"Prometheus to have {sorted(DASHBOARD_METRICS)}")
    query = prometheus.api("query", query="sum(vllm:generation_tokens_total)")
    assert float(query["result"][0]["value"][1]) >= 3


def test_rules_evaluate_and_a_stopped_backend_is_pending_down(server: Server, prometheus: Prometheus) -> None:
    server.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 5})
    expected = {name for text in rule_files(StackSettings(target="cluster")).values() for name in _rule_names(text)}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        done = len(rules) == len(expected) and all(rule["health"] != "unknown" for rule in rules)
        return rules if done else None

    rules = wait_for(evaluated, 30, "every rule evaluated")
    assert {rule["name"] for rule in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The thresholds from the config are live series.
    threshold = prometheus.api("query", query="slm:threshold:ttft_p95_seconds")["result"]
    assert [float(s["value"][1]) for s in threshold] == [5.0]
    wait_for(
        lambda: prometheus.api("query", query=f'up{{job="{backend_job("onnx")}"}} == 1')["result"], 30, "a first scrape"
    )

    server.stop()

    def pending() -> list[dict[str, Any]] | None:
        alerts = [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] == "BackendDown"]
        return alerts if alerts else None

    alerts = wait_for(pending, 60, "BackendDown pending after the server stopped")
    assert [(a["state"], a["labels"]["job"], a["labels"]["severity"]) for a in alerts] == [
        ("pending", "slm-onnx", "critical")  # `for: 2m` keeps it pending for the test's lifetime
    ]


def _rule_names(text: str) -> list[str]:
    return [rule.get("record") or rule["alert"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]

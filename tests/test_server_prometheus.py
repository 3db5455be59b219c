"""A real Prometheus on loopback scrapes a real ONNX server: the metric names dashboards, alerts and
autoscaling use (vLLM's) are there."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

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


def test_prometheus_scrapes_the_server(tiny_int4: Path, tmp_path: Path) -> None:
    server = Server(tiny_int4)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: onnx-server\n    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    prometheus = subprocess.Popen(
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
        for i in range(3):
            server.post("/v1/completions", json={"model": MODEL, "prompt": f"hello {i}", "max_tokens": 5})
        names: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not names >= DASHBOARD_METRICS:
            time.sleep(1)
            try:
                reply = httpx.get(f"http://127.0.0.1:{port}/api/v1/label/__name__/values", timeout=5)
                names = set(reply.json()["data"])
            except httpx.HTTPError:
                continue
        assert names >= DASHBOARD_METRICS, DASHBOARD_METRICS - names
        query = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query", params={"query": "sum(vllm:generation_tokens_total)"}, timeout=5
        ).json()
        assert float(query["data"]["result"][0]["value"][1]) >= 3
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        server.stop()

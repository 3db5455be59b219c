"""Autoscaling: the PromQL each backend's KEDA ScaledObject runs, evaluated by a real Prometheus
engine (`promtool test rules`, Debian's prometheus 2.42) on series shaped as the stack's exporters
publish them; prod's replica ranges against its pools; and the config rules for replica ranges.

Series names and labels were read from: Envoy's cluster statistics (`upstream_rq_active` gauge,
`upstream_cx_none_healthy` counter: a request that found no healthy host, answered 503) as Envoy
Gateway labels them (`envoy_cluster_name="httproute/<namespace>/<route>/rule/<n>"`, see
monitoring/metrics/envoy.txt); kube-state-metrics' `kube_deployment_status_replicas_ready`
(labels namespace, deployment; kube-state-metrics PR #1534); and our servers' and vLLM's
`vllm:num_requests_waiting` gauge, which the ServiceMonitor labels with namespace and service."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.k8s.namespaces import WORKLOAD_NAMESPACE
from infra.vm_sizes import GPU_SIZES
from tests.conftest import run_stack, stack_value
from tests.test_config import one as one_problem
from tests.test_config import problems
from tests.test_serving_manifests import kinds, one

NS = WORKLOAD_NAMESPACE


def envoy(metric: str, route: str, pod: str) -> str:
    return f'{metric}{{envoy_cluster_name="httproute/{NS}/{route}/rule/0", pod="{pod}"}}'


def ready(deployment: str) -> str:
    return f'kube_deployment_status_replicas_ready{{namespace="{NS}", deployment="{deployment}"}}'


def waiting(service: str, pod: str) -> str:
    return f'vllm:num_requests_waiting{{namespace="{NS}", service="{service}", pod="{pod}"}}'


IN_FLIGHT, UNSERVED = "envoy_cluster_upstream_rq_active", "envoy_cluster_upstream_cx_none_healthy"

# backend, situation, input series (one sample a minute, 6 minutes), the query's value at minute 5.
# Ollama runs num_parallel (4) requests at once per replica and queues the rest; two Envoy proxies
# share the traffic. At zero replicas the gateway answers 503 and counts no-healthy-upstream: a
# failure every 10 s is a rate of 0.1/s, above KEDA's activation threshold of 0.
SCENARIOS: list[tuple[str, str, dict[str, str], float]] = [
    (
        "ollama",
        "2 ready x 4 parallel, 11 in flight: 3 wait",
        {
            envoy(IN_FLIGHT, "ollama", "envoy-a"): "6x5",
            envoy(IN_FLIGHT, "ollama", "envoy-b"): "5x5",
            envoy(IN_FLIGHT, "vllm", "envoy-a"): "20x5",  # another route's traffic is not Ollama's
            ready("ollama"): "2x5",
            ready("vllm"): "1x5",
            envoy(UNSERVED, "ollama", "envoy-a"): "0x5",
        },
        3,
    ),
    (
        "ollama",
        "2 ready x 4 parallel, 5 in flight: none waits",
        {
            envoy(IN_FLIGHT, "ollama", "envoy-a"): "5x5",
            ready("ollama"): "2x5",
            envoy(UNSERVED, "ollama", "envoy-a"): "0x5",
        },
        0,
    ),
    (
        "ollama",
        "zero replicas, a request every 10 s gets no healthy upstream",
        {
            envoy(IN_FLIGHT, "ollama", "envoy-a"): "0x5",
            ready("ollama"): "0x5",
            envoy(UNSERVED, "ollama", "envoy-a"): "0+6x5",
        },
        0.1,
    ),
    (
        "ollama",
        "idle: 1 ready, nothing in flight, old failures long past",
        {
            envoy(IN_FLIGHT, "ollama", "envoy-a"): "0x5",
            ready("ollama"): "1x5",
            envoy(UNSERVED, "ollama", "envoy-a"): "3x5",
        },
        0,
    ),
    (
        "vllm",
        "2 + 3 waiting in two replicas (ONNX's queue, same metric, is not vLLM's)",
        {
            waiting("vllm", "vllm-1"): "2x5",
            waiting("vllm", "vllm-2"): "3x5",
            waiting("onnx", "onnx-1"): "7x5",
            envoy(IN_FLIGHT, "vllm", "envoy-a"): "70x5",
            envoy(UNSERVED, "vllm", "envoy-a"): "0x5",
        },
        5,
    ),
    ("vllm", "idle", {waiting("vllm", "vllm-1"): "0x5", envoy(UNSERVED, "vllm", "envoy-a"): "0x5"}, 0),
    (
        "onnx",
        "7 waiting in one replica",
        {waiting("onnx", "onnx-1"): "7x5", waiting("vllm", "vllm-1"): "4x5", envoy(UNSERVED, "onnx", "envoy-a"): "0x5"},
        7,
    ),
    (
        "onnx",
        "zero replicas: no queue series at all, requests fail at the gateway",
        {envoy(UNSERVED, "onnx", "envoy-b"): "0+6x5"},
        0.1,
    ),
    ("onnx", "idle", {waiting("onnx", "onnx-1"): "0x5"}, 0),
]

# prod's replica ranges (Pulumi.prod.yaml) and where they run: GPU replicas take one whole GPU.
PROD_RANGES = {
    # backend: (minReplicas, maxReplicas, pools it may run on)
    "vllm": (1, 4, "a10, t4spot"),
    "ollama": (0, 2, "a10, t4spot (t4spot scales to zero)"),
    "onnx": (1, 2, "system pool (never below 1 node)"),
}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package `prometheus`; scripts/test.py installs it when run as root)",
)

# Every backend with a replica range, as prod runs them.
RANGES = {
    "backends": {
        "vllm": {"enabled": True, "device": "gpu", "scaling": {"minReplicas": 1, "maxReplicas": 2}},
        "ollama": {"enabled": True, "device": "gpu", "scaling": {"minReplicas": 1, "maxReplicas": 2}},
        "onnx": {"enabled": True, "device": "cpu", "scaling": {"minReplicas": 1, "maxReplicas": 2}},
    }
}


def _queries(rec: Any) -> dict[str, str]:
    return {so["metadata"]["name"]: so["spec"]["triggers"][0]["metadata"]["query"] for so in kinds(rec, "ScaledObject")}


@needs_promtool
def test_each_scaler_query_counts_the_waiting_requests(tmp_path: Path) -> None:
    queries = _queries(run_stack("prod", overrides=RANGES))
    tests = [
        {
            "interval": "1m",
            "name": f"{backend}: {situation}",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "promql_expr_test": [{"expr": queries[backend], "eval_time": "5m", "exp_samples": [{"value": value}]}],
        }
        for backend, situation, series, value in SCENARIOS
    ]
    path = tmp_path / "scalers.yml"
    path.write_text(yaml.safe_dump({"evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prod_scales_every_backend_within_its_pools(rendered: Any) -> None:
    rec = rendered("prod")
    found = {
        name: (
            one(rec, "ScaledObject", name)["spec"]["minReplicaCount"],
            one(rec, "ScaledObject", name)["spec"]["maxReplicaCount"],
        )
        for name in PROD_RANGES
    }
    assert found == {name: (lo, hi) for name, (lo, hi, _) in PROD_RANGES.items()}
    for name in PROD_RANGES:
        # KEDA owns the replica count.
        assert "replicas" not in one(rec, "Deployment", name)["spec"]
    aks = stack_value("prod", "aks")
    gpu_slots = sum(p["maxCount"] * GPU_SIZES[p["vmSize"]].gpu_count for p in aks["gpuPools"])
    backends = stack_value("prod", "backends")
    gpu_replicas = sum(found[n][1] for n, b in backends.items() if b.get("device") == "gpu")
    assert gpu_replicas <= gpu_slots, f"{gpu_replicas} GPU replicas at most, {gpu_slots} GPUs at the pools' maxCount"
    cpu_replicas = sum(found[n][1] for n, b in backends.items() if b.get("device") != "gpu")
    assert cpu_replicas <= aks["systemPool"]["maxCount"]
    # Scale to zero only onto a pool that scales to zero.
    zero = [n for n, (lo, _) in found.items() if lo == 0]
    assert zero == ["ollama"] and any(p["minCount"] == 0 for p in aks["gpuPools"])


def _prod_backends(**scaling: dict[str, int]) -> dict[str, Any]:
    backends = stack_value("prod", "backends")
    for name, value in scaling.items():
        backends[name] = {**backends[name], "scaling": value}
    return {"backends": backends}


def test_scale_to_zero_is_refused_where_no_pool_can_follow() -> None:
    cpu = one_problem(
        problems("prod", _prod_backends(onnx={"minReplicas": 0, "maxReplicas": 2})),
        "slm-serving:backends.onnx.scaling.minReplicas",
    )
    assert "system pool" in cpu
    aks = stack_value("prod", "aks")
    aks["gpuPools"] = [{**p, "minCount": max(p["minCount"], 1)} for p in aks["gpuPools"]]
    gpu = one_problem(problems("prod", {"aks": aks}), "slm-serving:backends.ollama.scaling.minReplicas")
    assert "minCount 0" in gpu


def test_the_vm_refuses_replica_ranges() -> None:
    backends = stack_value("dev", "backends")
    backends["ollama"] = {**backends["ollama"], "scaling": {"minReplicas": 1, "maxReplicas": 3}}
    message = one_problem(problems("dev", {"backends": backends}), "slm-serving:backends.ollama.scaling")
    assert "one replica" in message

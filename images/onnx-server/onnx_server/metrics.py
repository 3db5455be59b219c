"""Prometheus metrics named after vLLM's (README: metric mapping), so one set of dashboards,
alerts and autoscaling triggers fits both backends."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_TOKEN_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "Requests being decoded.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests admitted and waiting.", labels, registry=r)
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Share of the KV cache's tokens held by running requests (1 = full).",
            labels,
            registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels, buckets=_LATENCY, registry=r
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between output tokens.",
            labels,
            buckets=_TOKEN_LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels, buckets=_LATENCY, registry=r
        )
        self.preemptions = Counter(
            "vllm:num_preemptions",
            "Sequences whose KV-cache row was taken back for older ones, to be prefilled again.",
            labels,
            registry=r,
        )
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens processed.", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels, registry=r)
        self.request_success = Counter(
            "vllm:request_success", "Finished requests by finish reason.", [*labels, "finished_reason"], registry=r
        )
        # --- request outcomes (access.py): every request read, whatever became of it -------------
        self.requests = Counter(
            "onnx_server_requests",
            "HTTP requests by endpoint, status code sent and outcome (ok, rejected, timeout, client_gone, "
            "cancelled, error).",
            ["endpoint", "status", "outcome"],
            registry=r,
        )
        # --- end of request outcomes ------------------------------------------------------------
        self.batch_size = Histogram(
            "onnx_server_batch_size",
            "Sequences per decoding batch.",
            labels,
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.model = model_name
        for gauge in (self.running, self.waiting):
            gauge.labels(model_name).set(0)
        self.preemptions.labels(model_name)  # exported as 0 before the first one, for rate()

    def for_model(self) -> PerToken:
        return PerToken(
            generation_tokens=self.generation_tokens.labels(self.model),
            ttft=self.ttft.labels(self.model),
            itl=self.itl.labels(self.model),
            running=self.running.labels(self.model),
            kv_usage=self.kv_usage.labels(self.model),
            batch_size=self.batch_size.labels(self.model),
        )


@dataclass(frozen=True)
class PerToken:
    """The children updated on every generated token or decode step, bound to this server's model
    label: a label lookup takes a lock and builds a key, which the engine would pay between steps."""

    generation_tokens: Counter
    ttft: Histogram
    itl: Histogram
    running: Gauge
    kv_usage: Gauge
    batch_size: Histogram

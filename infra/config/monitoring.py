"""Monitoring: where Prometheus runs, alert thresholds, and the receivers alerts go to."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator, model_validator

from infra.config.base import _Model
from infra.config.types import HttpUrl, ReceiverName


class AlertThresholds(_Model):
    """Alert thresholds; the shared rule files compare against these (rendered as `slm:threshold:*`)."""

    # Share of requests answered with a server error (5xx), per backend, over 5 minutes.
    error_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.05
    # Time to first token, 95th percentile over 5 minutes.
    ttft_p95_seconds: Annotated[float, Field(gt=0)] = 5.0
    # Requests waiting in one backend before a growing queue alerts.
    queue_waiting: Annotated[int, Field(ge=1)] = 10
    # Share of a GPU's memory in use.
    gpu_memory_ratio: Annotated[float, Field(gt=0, le=1)] = 0.95
    # Days before a certificate's expiry.
    certificate_days: Annotated[int, Field(ge=1, le=90)] = 14


class AlertReceiverConfig(_Model):
    """An Alertmanager receiver. None by default: alerts show in Prometheus and Alertmanager only."""

    name: ReceiverName
    # A webhook URL (Slack-compatible bridges, Teams connectors, PagerDuty Events v2 proxies, ...).
    webhook_url: HttpUrl | None = None
    email_to: str | None = None

    # Before the URL's shape: a plain-http or scheme-less URL is told why https is required.
    @field_validator("webhook_url", mode="before")
    @classmethod
    def _https(cls, value: object) -> object:
        if isinstance(value, str) and not value.startswith("https://"):
            raise ValueError(f"{value!r} is not an https:// URL (alerts carry pod and model names)")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> AlertReceiverConfig:
        if (self.webhook_url is None) == (self.email_to is None):
            raise ValueError("set exactly one of webhookUrl or emailTo")
        return self


class MonitoringConfig(_Model):
    """Where Prometheus runs: its namespace may scrape the backends, and KEDA reads queue depth from it."""

    # Install kube-prometheus-stack (Kubernetes targets). False: the cluster's own Prometheus
    # operator picks up our monitors, rules and dashboards.
    install: bool = True
    namespace: str = "monitoring"
    thresholds: AlertThresholds = AlertThresholds()
    receivers: tuple[AlertReceiverConfig, ...] = ()
    # Dashboards' cost panel: USD per GPU node hour by VM size (list prices change; set yours).
    gpu_hourly_usd: dict[str, float] = Field(default_factory=dict)
    # SMTP relay for email receivers (host:port); required when a receiver has emailTo.
    smtp_smarthost: str | None = None
    smtp_from: str | None = None
    # prometheus-operated is the Service the Prometheus operator creates for every Prometheus.
    prometheus_url: HttpUrl = "http://prometheus-operated.monitoring.svc:9090"

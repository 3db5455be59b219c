"""Validation types shared by the sections: each value rule and its message is defined once here."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

IPv4Cidr = ipaddress.IPv4Network


def _matching(pattern: str, message: str) -> Callable[[str], str]:
    """A check that `value` matches `pattern`; `message` names the value as `{value!r}`."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(message.format(value=value))
        return value

    return check


_NAME = r"^[a-z][a-z0-9-]{0,30}$"

_cpu = _matching(r"^(\d+m|\d+(\.\d+)?)$", "{value!r} is not a CPU quantity like '2', '0.5' or '500m'")
_memory = _matching(r"^\d+(Mi|Gi)$", "{value!r} is not a memory quantity like '16Gi' or '512Mi'")
_pool_name = _matching(
    r"^[a-z][a-z0-9]{0,7}$",
    "{value!r} is not a valid pool name; use 1-8 lowercase letters and digits starting "
    "with a letter (the stack appends a 4-character hash of size and taints)",
)
_route_prefix = _matching(_NAME, "{value!r} is not a route prefix; use lowercase letters, digits and '-'")
_client_name = _matching(_NAME, "client {value!r}: use lowercase letters, digits and '-'")
_receiver_name = _matching(r"^[a-z][a-z0-9-]{0,40}$", "{value!r}: use lowercase letters, digits and '-'")
_ollama_model_name = _matching(
    r"^[a-z0-9][a-z0-9._-]{0,62}$", "{value!r} is not an Ollama model name (lowercase letters, digits, '.', '_', '-')"
)
_ollama_model_ref = _matching(
    r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$", "{value!r} is not an Ollama model reference like 'phi4-mini:3.8b'"
)
_hub_model_id = _matching(
    r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", "{value!r} is not a Hugging Face model id like 'microsoft/Phi-4-mini-instruct'"
)
_http_url = _matching(
    r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/.*)?$",
    "{value!r} is not an http(s) URL like 'http://prometheus.monitoring.svc:9090' or 'https://example.com/path'",
)
_label_key = _matching(
    r"^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$",
    "label key {value!r} is not a valid Kubernetes label key",
)
_taint = _matching(
    r"^[A-Za-z0-9./-]+=[A-Za-z0-9._-]*:(NoSchedule|PreferNoSchedule|NoExecute)$",
    "taint {value!r} is not 'key=value:Effect' with Effect one of NoSchedule, PreferNoSchedule, NoExecute",
)

CpuQuantity = Annotated[str, AfterValidator(_cpu)]
MemoryQuantity = Annotated[str, AfterValidator(_memory)]
PoolName = Annotated[str, AfterValidator(_pool_name)]
RoutePrefix = Annotated[str, AfterValidator(_route_prefix)]
ReceiverName = Annotated[str, AfterValidator(_receiver_name)]
# A variant's own name (`ollama create <name>`) and a library reference with an optional tag.
OllamaModelName = Annotated[str, AfterValidator(_ollama_model_name)]
OllamaModelRef = Annotated[str, AfterValidator(_ollama_model_ref)]
HubModelId = Annotated[str, AfterValidator(_hub_model_id)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


# Collections are checked as a whole so a problem is reported at the collection's key, as before.
def _taints(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("a GPU pool needs at least one taint, e.g. 'sku=gpu:NoSchedule'")
    for taint in value:
        _taint(taint)
    return value


def _node_taints(value: tuple[str, ...]) -> tuple[str, ...]:
    for taint in value:
        _taint(taint)
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        _label_key(key)
    return value


def _client_names(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("at least one client is needed; every route requires an API key")
    for name in value:
        _client_name(name)
    if len(set(value)) != len(value):
        raise ValueError("client names must be unique")
    return value


Taints = Annotated[tuple[str, ...], AfterValidator(_taints)]
# Taints of nodes the stack does not create (an existing cluster's): none is a valid answer.
NodeTaints = Annotated[tuple[str, ...], AfterValidator(_node_taints)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
ClientNames = Annotated[tuple[str, ...], AfterValidator(_client_names)]

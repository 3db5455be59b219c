"""The engines the stack can run, in one list. Everything that names backends elsewhere (config
validation, endpoints, scrape jobs, gateway and proxy routes, rules and dashboards) reads it here.
Adding an engine: a module in infra/backends/ with its config model and `describe`, one entry below."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from infra.backends import ollama, onnx, vllm
from infra.backends.description import Backend, Paths, Route
from infra.config import BackendConfig, OllamaBackendConfig, OnnxBackendConfig, VllmBackendConfig


@dataclass(frozen=True)
class BackendKind:
    """An engine: its config model (the `backends.<name>` key) and how to describe it."""

    name: str
    config_model: type[BackendConfig]
    # (its config, what the target provides, its route prefix) -> the description.
    describe: Callable[[Any, Paths, str], Backend]
    # The oldest CUDA compute capability its GPU build runs on; None: any NVIDIA GPU.
    min_compute_capability: float | None = None


_KINDS: dict[str, BackendKind] = {
    kind.name: kind
    for kind in (
        BackendKind("vllm", VllmBackendConfig, vllm.describe, vllm.MIN_COMPUTE_CAPABILITY),
        BackendKind("ollama", OllamaBackendConfig, ollama.describe),
        BackendKind("onnx", OnnxBackendConfig, onnx.describe),
    )
}


def kinds() -> list[BackendKind]:
    """Every registered engine, in registry order (the order of config errors, ports, exports)."""
    return list(_KINDS.values())


def kind(name: str) -> BackendKind:
    return _KINDS[name]


def names() -> list[str]:
    return list(_KINDS)


@contextmanager
def registered(extra: BackendKind) -> Iterator[None]:
    """Register an engine for the duration of a block (tests of a new engine's wiring)."""
    if extra.name in _KINDS:
        raise ValueError(f"backend {extra.name!r} is already registered")
    _KINDS[extra.name] = extra
    try:
        yield
    finally:
        del _KINDS[extra.name]


def route_prefix(name: str, config: BackendConfig) -> str:
    return config.route_prefix or name


def describe(name: str, config: BackendConfig, paths: Paths) -> Backend:
    return _KINDS[name].describe(config, paths, route_prefix(name, config))


def enabled(backends: Any, paths: Paths) -> list[Backend]:
    """Descriptions of the enabled backends of a `BackendsConfig`, in registry order."""
    return [describe(name, config, paths) for name, config in backends.enabled().items()]


def routes(backends: Any) -> list[Route]:
    """What clients reach, per enabled backend (target facts do not change routes)."""
    return [b.route for b in enabled(backends, Paths(secrets="/", hf_token=False))]

"""The stack configuration: read once from Pulumi config, validated, frozen.

Every problem is reported at once, each with its key path (`slm-serving:aks.gpuPools[0].vmSize`), the
bad value and what would be valid: a key's own problems and those of the rules that span keys, in one
list. Nothing else in the program reads Pulumi config.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ValidationError

from infra.config.backends import (
    DEFAULT_VARIANTS,
    BackendConfig,
    BackendsConfig,
    ConversionConfig,
    Device,
    ModelVariantConfig,
    OllamaBackendConfig,
    OnnxBackendConfig,
    ResourcesConfig,
    ScalingConfig,
    VllmBackendConfig,
)
from infra.config.base import NAMESPACE
from infra.config.cloud import (
    AddonsConfig,
    AksConfig,
    ClusterConfig,
    GpuPoolConfig,
    ImagesConfig,
    KeyVaultConfig,
    MaintenanceWindowConfig,
    NetworkConfig,
    RegistryConfig,
    StorageConfig,
    SystemPoolConfig,
    VmConfig,
)
from infra.config.errors import ConfigError, Problem, failed_keys, problems_from
from infra.config.gateway import GatewayConfig, WebUiConfig
from infra.config.monitoring import AlertReceiverConfig, AlertThresholds, MonitoringConfig
from infra.config.rules import checked, cross_check, required_secrets
from infra.config.settings import (
    AZURE_TARGETS,
    SECRET_KEYS,
    Environment,
    StackConfig,
    StackSecrets,
    StackSettings,
    Target,
)
from infra.config.types import IPv4Cidr

__all__ = [
    "AZURE_TARGETS",
    "DEFAULT_VARIANTS",
    "NAMESPACE",
    "SECRET_KEYS",
    "AddonsConfig",
    "AksConfig",
    "AlertReceiverConfig",
    "AlertThresholds",
    "BackendConfig",
    "BackendsConfig",
    "ClusterConfig",
    "ConfigError",
    "ConversionConfig",
    "Device",
    "Environment",
    "GatewayConfig",
    "GpuPoolConfig",
    "IPv4Cidr",
    "ImagesConfig",
    "KeyVaultConfig",
    "MaintenanceWindowConfig",
    "ModelVariantConfig",
    "MonitoringConfig",
    "NetworkConfig",
    "OllamaBackendConfig",
    "OnnxBackendConfig",
    "Problem",
    "RegistryConfig",
    "ResourcesConfig",
    "ScalingConfig",
    "StackConfig",
    "StackSecrets",
    "StackSettings",
    "StorageConfig",
    "SystemPoolConfig",
    "Target",
    "VllmBackendConfig",
    "VmConfig",
    "WebUiConfig",
    "cross_check",
    "load",
    "parse",
    "required_secrets",
]

# Stands in for a target that failed to parse; no rule that reads the target runs then.
_PLACEHOLDER_TARGET = "cluster"


def _raw_values() -> dict[str, Any]:
    """All non-secret keys of our namespace, JSON-decoded where they are structured values."""
    merged: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    raw: dict[str, Any] = {}
    for full_key, value in merged.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if key in SECRET_KEYS:
            continue
        raw[key] = _decode(value)
    return raw


def _decode(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _validate(raw: dict[str, Any]) -> StackSettings:
    # JSON mode: strict about types, yet lists become tuples and strings become CIDRs and dates.
    return StackSettings.model_validate_json(json.dumps(raw))


def parse(raw: dict[str, Any], present_secrets: set[str]) -> StackSettings:
    """Validate the stack's keys and the rules across them, or raise ConfigError listing both kinds.

    When keys fail, the rules still run: each failed top-level key falls back to its default (a failed
    section to an empty one, so it still counts as written), and a rule reading a failed key is
    skipped, since it would judge the default rather than the stack file.
    """
    try:
        settings = _validate(raw)
    except ValidationError as error:
        problems = problems_from(error, StackSettings)
        aliases = {field.alias or name: name for name, field in StackSettings.model_fields.items()}
        failed: set[str] = set()
        fallback = dict(raw)
        for key in failed_keys(error):
            name = aliases.get(key, key)
            if name not in StackSettings.model_fields:
                fallback.pop(key, None)  # an unknown key: no rule reads it
                continue
            failed.add(name)
            if name == "target":
                fallback[key] = _PLACEHOLDER_TARGET
            elif isinstance(StackSettings.model_fields[name].default, BaseModel):
                fallback[key] = {}
            else:
                fallback.pop(key, None)
        # Should the fallback still not parse, the key problems stand alone.
        with contextlib.suppress(ValidationError):
            problems += checked(_validate(fallback), present_secrets, failed)
        raise ConfigError(problems) from None
    problems = cross_check(settings, present_secrets)
    if problems:
        raise ConfigError(problems)
    return settings


def load() -> StackConfig:
    """Read and validate the whole stack configuration, or raise ConfigError listing every problem."""
    cfg = pulumi.Config(NAMESPACE)
    present_secrets = {key for key in SECRET_KEYS if cfg.get_secret(key) is not None}
    settings = parse(_raw_values(), present_secrets)
    required = required_secrets(settings.target)
    secrets = StackSecrets(
        hf_token=cfg.require_secret("hfToken") if "hfToken" in required else cfg.get_secret("hfToken"),
        kubeconfig=cfg.get_secret("kubeconfig"),
    )
    return StackConfig(settings, secrets, stack=pulumi.get_stack(), project=pulumi.get_project())

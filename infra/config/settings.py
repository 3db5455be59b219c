"""The whole stack: StackSettings (every non-secret key), StackSecrets, and StackConfig holding both."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

import pulumi
from pydantic import field_validator

from infra.config.backends import BackendsConfig
from infra.config.base import _Model
from infra.config.cloud import (
    AddonsConfig,
    AksConfig,
    ClusterConfig,
    ImagesConfig,
    KeyVaultConfig,
    NetworkConfig,
    RegistryConfig,
    StorageConfig,
    VmConfig,
)
from infra.config.gateway import GatewayConfig, WebUiConfig
from infra.config.monitoring import MonitoringConfig
from infra.config.types import IPv4Cidr

SECRET_KEYS = ("hfToken", "kubeconfig")
AZURE_TARGETS = ("aks", "vm")

Target = Literal["aks", "vm", "cluster"]
Environment = Literal["dev", "test", "staging", "prod", "local"]


class StackSettings(_Model):
    """Every non-secret key of the stack, as written in Pulumi.<stack>.yaml."""

    target: Target
    environment: Environment = "dev"
    owner: str = ""
    location: str = "swedencentral"
    expires_on: dt.date | None = None
    protect: bool | None = None
    # Encrypt temp disks and caches on the hosts; needs the subscription feature
    # Microsoft.Compute/EncryptionAtHost registered (README: prerequisites).
    encryption_at_host: bool = True
    allowed_cidrs: tuple[IPv4Cidr, ...] = ()
    network: NetworkConfig = NetworkConfig()
    aks: AksConfig = AksConfig()
    registry: RegistryConfig = RegistryConfig()
    key_vault: KeyVaultConfig = KeyVaultConfig()
    vm: VmConfig = VmConfig()
    cluster: ClusterConfig = ClusterConfig()
    storage: StorageConfig = StorageConfig()
    backends: BackendsConfig = BackendsConfig()
    gateway: GatewayConfig = GatewayConfig()
    addons: AddonsConfig = AddonsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    images: ImagesConfig = ImagesConfig()
    web_ui: WebUiConfig = WebUiConfig()

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9]+$", value):
            raise ValueError(f"{value!r} is not an Azure region name like 'swedencentral' or 'eastus2'")
        return value

    @property
    def is_azure(self) -> bool:
        return self.target in AZURE_TARGETS

    @property
    def protect_resources(self) -> bool:
        return self.environment == "prod" if self.protect is None else self.protect

    @property
    def uses_gpu(self) -> bool:
        return any(b.device == "gpu" for b in self.backends.enabled().values())

    @property
    def purge_protection(self) -> bool:
        pp = self.key_vault.purge_protection
        return self.environment == "prod" if pp is None else pp


@dataclass(frozen=True)
class StackSecrets:
    hf_token: pulumi.Output[str] | None
    kubeconfig: pulumi.Output[str] | None


@dataclass(frozen=True)
class StackConfig:
    settings: StackSettings
    secrets: StackSecrets
    stack: str
    project: str

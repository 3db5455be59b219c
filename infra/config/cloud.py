"""The platform sections: network, AKS and its pools, registry, Key Vault, VM, cluster, storage, add-ons, images."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from infra.config.base import _Model
from infra.config.types import CpuQuantity, IPv4Cidr, Labels, MemoryQuantity, NodeTaints, PoolName, Taints
from infra.vm_sizes import CPU_SIZES, GPU_SIZES

_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$")


def _choices(values: Any) -> str:
    return ", ".join(sorted(values))


class NetworkConfig(_Model):
    address_space: IPv4Cidr = IPv4Cidr("10.40.0.0/16")
    aks_subnet: IPv4Cidr = IPv4Cidr("10.40.0.0/20")
    vm_subnet: IPv4Cidr = IPv4Cidr("10.40.16.0/24")
    # Kubernetes service and (CNI overlay) pod ranges: never routed in the VNet, must not overlap it.
    service_cidr: IPv4Cidr = IPv4Cidr("10.41.0.0/16")
    dns_service_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("10.41.0.10")
    pod_cidr: IPv4Cidr = IPv4Cidr("10.244.0.0/16")


class SystemPoolConfig(_Model):
    vm_size: str = "Standard_D4ds_v5"
    min_count: Annotated[int, Field(ge=1, le=100)] = 1
    max_count: Annotated[int, Field(ge=1, le=100)] = 3
    os_disk_size_gb: Annotated[int, Field(ge=30, le=2048)] = 128

    @field_validator("vm_size")
    @classmethod
    def _known_cpu_size(cls, value: str) -> str:
        if value not in CPU_SIZES:
            raise ValueError(f"{value!r} is not a supported system pool size; valid: {_choices(CPU_SIZES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> SystemPoolConfig:
        if self.min_count > self.max_count:
            raise ValueError(f"minCount {self.min_count} is greater than maxCount {self.max_count}")
        return self


class GpuPoolConfig(_Model):
    name: PoolName
    vm_size: str
    min_count: Annotated[int, Field(ge=0, le=100)] = 0
    max_count: Annotated[int, Field(ge=1, le=100)] = 1
    taints: Taints = ("sku=gpu:NoSchedule",)
    labels: Labels = Field(default_factory=lambda: {"accelerator": "nvidia"})
    os_disk_size_gb: Annotated[int, Field(ge=30, le=2048)] = 128
    spot: bool = False
    # -1 means "pay up to the on-demand price"; otherwise a USD price per hour.
    spot_max_price: float = -1.0
    eviction_policy: Literal["Delete", "Deallocate"] = "Delete"

    @field_validator("vm_size")
    @classmethod
    def _known_gpu_size(cls, value: str) -> str:
        if value not in GPU_SIZES:
            raise ValueError(f"{value!r} is not a supported GPU size; valid: {_choices(GPU_SIZES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> GpuPoolConfig:
        if self.min_count > self.max_count:
            raise ValueError(f"minCount {self.min_count} is greater than maxCount {self.max_count}")
        if not self.spot and self.spot_max_price != -1.0:
            raise ValueError("spotMaxPrice is set but spot is false")
        if self.spot_max_price != -1.0 and self.spot_max_price <= 0:
            raise ValueError(f"spotMaxPrice {self.spot_max_price} must be -1 (on-demand cap) or > 0")
        return self


class MaintenanceWindowConfig(_Model):
    day: Literal["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"] = "Sunday"
    start_hour: Annotated[int, Field(ge=0, le=23)] = 2
    # AKS requires at least four hours.
    duration_hours: Annotated[int, Field(ge=4, le=24)] = 4


class AksConfig(_Model):
    kubernetes_version: str | None = None
    tier: Literal["Free", "Standard", "Premium"] = "Free"
    system_pool: SystemPoolConfig = SystemPoolConfig()
    gpu_pools: tuple[GpuPoolConfig, ...] = ()
    upgrade_channel: Literal["none", "patch", "stable", "rapid", "node-image"] = "patch"
    node_os_upgrade_channel: Literal["None", "Unmanaged", "NodeImage", "SecurityPatch"] = "NodeImage"
    maintenance_window: MaintenanceWindowConfig = MaintenanceWindowConfig()
    admin_group_object_ids: tuple[str, ...] = ()

    @field_validator("kubernetes_version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^1\.\d{2}(\.\d+)?$", value):
            raise ValueError(f"{value!r} is not a Kubernetes version like '1.33' or '1.33.2'")
        return value

    @field_validator("admin_group_object_ids")
    @classmethod
    def _uuids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not re.match(r"^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$", item):
                raise ValueError(f"{item!r} is not an Entra ID group object id (a lowercase GUID)")
        return value

    @field_validator("gpu_pools")
    @classmethod
    def _unique_names(cls, value: tuple[GpuPoolConfig, ...]) -> tuple[GpuPoolConfig, ...]:
        names = [pool.name for pool in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"GPU pool names must be unique; repeated: {', '.join(duplicates)}")
        return value


class RegistryConfig(_Model):
    # Standard: Defender image scanning; Basic has none.
    sku: Literal["Basic", "Standard", "Premium"] = "Standard"


class ImagesConfig(_Model):
    """How the stack's own images (converter, ONNX server) reach the registry."""

    # local: build with this machine's Docker (buildx) and push; remote: build inside ACR with ACR
    # Tasks (`az acr build`, no Docker daemon needed; Azure targets); none: built and pushed
    # elsewhere, referenced by their build-context tag.
    build: Literal["local", "remote", "none"] = "local"


class KeyVaultConfig(_Model):
    soft_delete_retention_days: Annotated[int, Field(ge=7, le=90)] = 7
    # None: on for prod, off elsewhere (purge protection makes a vault name unusable for the retention).
    purge_protection: bool | None = None


class VmConfig(_Model):
    size: str = "Standard_NC4as_T4_v3"
    admin_username: str = "azureuser"
    # Unset: the stack generates a key pair and exports the private key as a secret.
    ssh_public_key: str | None = None
    os_disk_size_gb: Annotated[int, Field(ge=30, le=2048)] = 64
    data_disk_size_gb: Annotated[int, Field(ge=32, le=4096)] = 256
    spot: bool = False

    @field_validator("size")
    @classmethod
    def _known_size(cls, value: str) -> str:
        if value not in GPU_SIZES and value not in CPU_SIZES:
            raise ValueError(
                f"{value!r} is not a supported VM size; GPU sizes: {_choices(GPU_SIZES)}; "
                f"CPU sizes: {_choices(CPU_SIZES)}"
            )
        return value

    @field_validator("admin_username")
    @classmethod
    def _username(cls, value: str) -> str:
        if value in {"root", "admin", "administrator", "azure"} or not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", value):
            raise ValueError(f"{value!r} is not allowed; use a lowercase Linux user name other than root/admin")
        return value

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is not None and not _SSH_KEY.match(value.strip()):
            raise ValueError("not an OpenSSH public key (ssh-ed25519, ssh-rsa or ecdsa-sha2-nistp*)")
        return value

    @property
    def has_gpu(self) -> bool:
        return self.size in GPU_SIZES


class GpuNodesConfig(_Model):
    """How an existing cluster marks its GPU nodes: GPU pods tolerate `taints` and select `labels`."""

    taints: NodeTaints = ()
    labels: Labels = Field(default_factory=dict)


class ClusterNodesConfig(_Model):
    """The cluster's nodes, when known: the stack then checks that its pods fit before deploying."""

    cpu: CpuQuantity
    memory: MemoryQuantity
    count: Annotated[int, Field(ge=1, le=1000)] = 1
    # The nodes also run the control plane (a kind or k3d cluster): its pods take their share.
    control_plane: bool = False


class ClusterConfig(_Model):
    # Kubeconfig context to use when the secret `kubeconfig` is not set (then ~/.kube/config is read).
    context: str | None = None
    # Registry the stack's own images (converter, ONNX server) are pulled from on this cluster.
    registry: str = "localhost:5001"
    gpu_nodes: GpuNodesConfig = GpuNodesConfig()
    # None: node sizes unknown, placement is left to the cluster's scheduler.
    nodes: ClusterNodesConfig | None = None


class StorageConfig(_Model):
    """The shared model volume (Kubernetes targets). Several replicas mount one copy read-only."""

    # None: azurefile-csi-premium on aks (ReadWriteMany); the cluster's default class elsewhere.
    class_name: str | None = None
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    size_gb: Annotated[int, Field(ge=1, le=4096)] = 64


class AddonsConfig(_Model):
    """Cluster add-ons the stack installs. Turn one off when the cluster already runs it."""

    # None: installed when a backend uses a GPU.
    nvidia_device_plugin: bool | None = None
    envoy_gateway: bool = True
    cert_manager: bool = True
    keda: bool = True

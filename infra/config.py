"""The stack configuration: read once from Pulumi config, validated, frozen.

Every problem is reported at once, each with its key path (`slm-serving:aks.gpuPools[0].vmSize`), the
bad value and what would be valid. Nothing else in the program reads Pulumi config.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from infra.vm_sizes import CPU_SIZES, GPU_SIZES, VLLM_MIN_COMPUTE_CAPABILITY

NAMESPACE = "slm-serving"
SECRET_KEYS = ("hfToken", "kubeconfig")
AZURE_TARGETS = ("aks", "vm")

Target = Literal["aks", "vm", "cluster"]
Environment = Literal["dev", "test", "staging", "prod", "local"]
Device = Literal["gpu", "cpu"]
BackendName = Literal["vllm", "ollama", "onnx"]
IPv4Cidr = ipaddress.IPv4Network

_POOL_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_TAINT = re.compile(r"^[A-Za-z0-9./-]+=[A-Za-z0-9._-]*:(NoSchedule|PreferNoSchedule|NoExecute)$")
_LABEL_KEY = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$")


def _choices(values: Any) -> str:
    return ", ".join(sorted(values))


def _hub_model_id(value: str) -> str:
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", value):
        raise ValueError(f"{value!r} is not a Hugging Face model id like 'microsoft/Phi-4-mini-instruct'")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, strict=True)


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
    name: str
    vm_size: str
    min_count: Annotated[int, Field(ge=0, le=100)] = 0
    max_count: Annotated[int, Field(ge=1, le=100)] = 1
    taints: tuple[str, ...] = ("sku=gpu:NoSchedule",)
    labels: dict[str, str] = Field(default_factory=lambda: {"accelerator": "nvidia"})
    os_disk_size_gb: Annotated[int, Field(ge=30, le=2048)] = 128
    spot: bool = False
    # -1 means "pay up to the on-demand price"; otherwise a USD price per hour.
    spot_max_price: float = -1.0
    eviction_policy: Literal["Delete", "Deallocate"] = "Delete"

    @field_validator("name")
    @classmethod
    def _pool_name(cls, value: str) -> str:
        if not _POOL_NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid pool name; use 1-8 lowercase letters and digits starting "
                "with a letter (the stack appends a 4-character hash of size and taints)"
            )
        return value

    @field_validator("vm_size")
    @classmethod
    def _known_gpu_size(cls, value: str) -> str:
        if value not in GPU_SIZES:
            raise ValueError(f"{value!r} is not a supported GPU size; valid: {_choices(GPU_SIZES)}")
        return value

    @field_validator("taints")
    @classmethod
    def _taint_format(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("a GPU pool needs at least one taint, e.g. 'sku=gpu:NoSchedule'")
        for taint in value:
            if not _TAINT.match(taint):
                raise ValueError(
                    f"taint {taint!r} is not 'key=value:Effect' with Effect one of "
                    "NoSchedule, PreferNoSchedule, NoExecute"
                )
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
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


class ClusterConfig(_Model):
    # Kubeconfig context to use when the secret `kubeconfig` is not set (then ~/.kube/config is read).
    context: str | None = None
    # Registry the stack's own images (converter, ONNX server) are pulled from on this cluster.
    registry: str = "localhost:5001"


class StorageConfig(_Model):
    """The shared model volume (Kubernetes targets). Several replicas mount one copy read-only."""

    # None: azurefile-csi-premium on aks (ReadWriteMany); the cluster's default class elsewhere.
    class_name: str | None = None
    access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = "ReadWriteMany"
    size_gb: Annotated[int, Field(ge=1, le=4096)] = 64


class ConversionConfig(_Model):
    """How the ONNX backend's model is made (`python -m convert`)."""

    model: str = "microsoft/Phi-4-mini-instruct"
    revision: str = "main"
    # None: cpu-int4 for a CPU backend, cuda-int4 for a GPU one.
    target: Literal["cpu-int4", "cpu-fp32", "cuda-int4", "cuda-fp16"] | None = None
    method: Literal["olive", "builder"] = "olive"
    block_size: Literal[16, 32, 64, 128, 256] = 32
    accuracy_level: Annotated[int, Field(ge=0, le=4)] = 4
    # An already converted repository (e.g. microsoft/Phi-4-mini-instruct-onnx) instead of converting.
    prebuilt: str | None = None
    prebuilt_subfolder: str | None = None
    cpu: str = "2"
    memory: str = "32Gi"
    # Give up after this long (a 3.8B model converts in well under an hour on 4 cores).
    deadline_minutes: Annotated[int, Field(ge=5, le=24 * 60)] = 180

    @field_validator("model")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        return _hub_model_id(value)

    @field_validator("memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not re.match(r"^\d+(Mi|Gi)$", value):
            raise ValueError(f"{value!r} is not a memory quantity like '32Gi'")
        return value


_CPU_QUANTITY = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
_MEMORY_QUANTITY = re.compile(r"^\d+(Mi|Gi)$")


class ResourcesConfig(_Model):
    """Requests for one replica; the memory request is also its limit (no overcommit of model memory)."""

    cpu: str = "2"
    memory: str = "8Gi"

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str) -> str:
        if not _CPU_QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a CPU quantity like '2', '0.5' or '500m'")
        return value

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY_QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a memory quantity like '16Gi' or '512Mi'")
        return value


class ScalingConfig(_Model):
    """Replica bounds; KEDA scales between them on queue depth (when it is installed or assumed)."""

    min_replicas: Annotated[int, Field(ge=0, le=100)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    # Requests waiting per replica before another replica is added.
    queue_target: Annotated[float, Field(gt=0)] = 4.0
    # Seconds without load before scaling down (to zero when minReplicas is 0).
    cooldown_seconds: Annotated[int, Field(ge=30, le=86400)] = 600

    @model_validator(mode="after")
    def _bounds(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas {self.min_replicas} is greater than maxReplicas {self.max_replicas}")
        return self

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas > self.min_replicas


class BackendConfig(_Model):
    enabled: bool = False
    device: Device = "cpu"
    scaling: ScalingConfig = ScalingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    # How long a new replica may take to download and load its model before it is restarted.
    startup_minutes: Annotated[int, Field(ge=1, le=24 * 60)] = 60
    # Exposed at https://<gateway>/<routePrefix>/v1 (path routing) or https://<routePrefix>.<domain>/v1.
    route_prefix: str | None = None

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z][a-z0-9-]{0,30}$", value):
            raise ValueError(f"{value!r} is not a route prefix; use lowercase letters, digits and '-'")
        return value


class VllmBackendConfig(BackendConfig):
    model: str = "microsoft/Phi-4-mini-instruct"
    revision: str = "main"
    # The name clients pass as `model`; None: the model id.
    served_model_name: str | None = None
    max_model_len: Annotated[int, Field(ge=256, le=131072)] = 16384
    gpu_memory_utilization: Annotated[float, Field(gt=0.1, le=0.98)] = 0.90
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 64
    # Phi-4-mini emits tool calls as JSON after <|tool_call|>; vLLM's parser for it is phi4_mini_json.
    tool_call_parser: str | None = "phi4_mini_json"
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes"] | None = None
    dtype: Literal["auto", "half", "bfloat16", "float16"] = "auto"
    resources: ResourcesConfig = ResourcesConfig(cpu="4", memory="24Gi")

    @field_validator("model")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        return _hub_model_id(value)


class ModelVariantConfig(_Model):
    """An Ollama Modelfile variant of the base model: its own name, sampling and system prompt."""

    name: str
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    system: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9._-]{0,62}$", value):
            raise ValueError(f"{value!r} is not an Ollama model name (lowercase letters, digits, '.', '_', '-')")
        return value


DEFAULT_VARIANTS = (
    ModelVariantConfig(
        name="phi4-mini-reasoning",
        temperature=0.3,
        top_p=0.8,
        system="You are a careful reasoner. Think step by step, show your reasoning, then state the answer.",
    ),
    ModelVariantConfig(
        name="phi4-mini-coder",
        temperature=0.5,
        top_p=0.9,
        system="You are a senior software engineer. Write clean, idiomatic, well-tested code and explain briefly.",
    ),
)


class OllamaBackendConfig(BackendConfig):
    # A tag from the Ollama library, pulled once into the model volume.
    model: str = "phi4-mini:3.8b"
    variants: tuple[ModelVariantConfig, ...] = DEFAULT_VARIANTS
    num_parallel: Annotated[int, Field(ge=1, le=64)] = 4
    max_loaded_models: Annotated[int, Field(ge=1, le=16)] = 3
    flash_attention: bool = True
    # Keep models loaded: Ollama unloads after 5 idle minutes by default. "-1" keeps them forever.
    keep_alive: str = "-1"
    resources: ResourcesConfig = ResourcesConfig(cpu="4", memory="12Gi")

    @field_validator("model")
    @classmethod
    def _tag(cls, value: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$", value):
            raise ValueError(f"{value!r} is not an Ollama model reference like 'phi4-mini:3.8b'")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str) -> str:
        if not re.match(r"^(-1|0|\d+[smh]?)$", value):
            raise ValueError(f"{value!r} is not a keep-alive like '-1' (forever), '30m' or '24h'")
        return value

    @field_validator("variants")
    @classmethod
    def _unique(cls, value: tuple[ModelVariantConfig, ...]) -> tuple[ModelVariantConfig, ...]:
        names = [v.name for v in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"variant names must be unique; repeated: {', '.join(repeated)}")
        return value


class OnnxBackendConfig(BackendConfig):
    conversion: ConversionConfig = ConversionConfig()
    # The name clients pass as `model`.
    served_model_name: str = "phi-4-mini-onnx"
    max_batch: Annotated[int, Field(ge=1, le=256)] = 16
    max_waiting: Annotated[int, Field(ge=1, le=4096)] = 64
    resources: ResourcesConfig = ResourcesConfig(cpu="4", memory="8Gi")

    @property
    def conversion_target(self) -> str:
        return self.conversion.target or ("cuda-int4" if self.device == "gpu" else "cpu-int4")


class BackendsConfig(_Model):
    vllm: VllmBackendConfig = VllmBackendConfig()
    ollama: OllamaBackendConfig = OllamaBackendConfig()
    onnx: OnnxBackendConfig = OnnxBackendConfig()

    def enabled(self) -> dict[str, BackendConfig]:
        return {name: b for name, b in (("vllm", self.vllm), ("ollama", self.ollama), ("onnx", self.onnx)) if b.enabled}


class GatewayConfig(_Model):
    """The one TLS entry point in front of every backend."""

    # A DNS name you control: TLS from ACME (Let's Encrypt). Unset: a self-signed certificate.
    domain: str | None = None
    acme_email: str | None = None
    acme_server: str = "https://acme-v02.api.letsencrypt.org/directory"
    # path: https://<domain>/<backend>/v1; host: https://<backend>.<domain>/v1 (needs domain).
    routing: Literal["path", "host"] = "path"
    # No public address: an internal load balancer (aks) or a ClusterIP service.
    internal_only: bool = False
    # One API key is generated per client name; every route accepts any of them.
    api_key_clients: tuple[str, ...] = ("default",)
    # cluster target: the host clients reach the gateway at (your load balancer's name or IP, or
    # `localhost:8443` with a port-forward). Unset: the gateway's in-cluster name.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9.-]+(:\d{1,5})?$", value):
            raise ValueError(f"{value!r} is not a host[:port] like 'llm.example.com' or 'localhost:8443'")
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}$", value):
            raise ValueError(f"{value!r} is not a DNS name like 'llm.example.com'")
        return value

    @field_validator("api_key_clients")
    @classmethod
    def _clients(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one client is needed; every route requires an API key")
        for name in value:
            if not re.match(r"^[a-z][a-z0-9-]{0,30}$", name):
                raise ValueError(f"client {name!r}: use lowercase letters, digits and '-'")
        if len(set(value)) != len(value):
            raise ValueError("client names must be unique")
        return value


class AddonsConfig(_Model):
    """Cluster add-ons the stack installs. Turn one off when the cluster already runs it."""

    # None: installed when a backend uses a GPU.
    nvidia_device_plugin: bool | None = None
    envoy_gateway: bool = True
    cert_manager: bool = True
    keda: bool = True


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

    name: str
    # A webhook URL (Slack-compatible bridges, Teams connectors, PagerDuty Events v2 proxies, ...).
    webhook_url: str | None = None
    email_to: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(r"^[a-z][a-z0-9-]{0,40}$", value):
            raise ValueError(f"{value!r}: use lowercase letters, digits and '-'")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
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
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/.*)?$", value):
            raise ValueError(f"{value!r} is not an http(s) URL like 'http://prometheus.monitoring.svc:9090'")
        return value


class ImagesConfig(_Model):
    """How the stack's own images (converter, ONNX server) reach the registry."""

    # local: build with this machine's Docker (buildx) and push; remote: build inside ACR with ACR
    # Tasks (`az acr build`, no Docker daemon needed; Azure targets); none: built and pushed
    # elsewhere, referenced by their build-context tag.
    build: Literal["local", "remote", "none"] = "local"


class WebUiConfig(_Model):
    """Open WebUI in front of the backends, with its own sign-in (exposed at <gateway>/ui)."""

    enabled: bool = False


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


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(pulumi.RunError):
    """Raised before any resource exists; the message lists every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)):\n{lines}")


# --- reading -----------------------------------------------------------------------------------


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


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return f"{NAMESPACE}:{path}"


def _fields_at(loc: tuple[int | str, ...]) -> list[str] | None:
    """The valid keys of the model found at `loc` (for "unknown key" errors)."""
    model: Any = StackSettings
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return [f.alias or n for n, f in model.model_fields.items()]


def _problems_from(error: ValidationError) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            message = f"unknown key {loc[-1]!r}; valid keys: {', '.join(valid or [])}"
        elif item["type"] == "missing":
            message = "required key is not set"
        elif item["type"] not in ("value_error", "assertion_error"):
            message = f"{message} (got {item.get('input')!r})"
        problems.append(Problem(_key_path(loc), message))
    return problems


def _overlap_problems(net: NetworkConfig) -> list[Problem]:
    key = f"{NAMESPACE}:network"
    problems: list[Problem] = []
    for name, subnet in (("aksSubnet", net.aks_subnet), ("vmSubnet", net.vm_subnet)):
        if not subnet.subnet_of(net.address_space):
            problems.append(Problem(f"{key}.{name}", f"{subnet} is not inside addressSpace {net.address_space}"))
    ranges = {
        "aksSubnet": net.aks_subnet,
        "vmSubnet": net.vm_subnet,
        "serviceCidr": net.service_cidr,
        "podCidr": net.pod_cidr,
    }
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if ranges[a].overlaps(ranges[b]):
                problems.append(Problem(f"{key}.{b}", f"{ranges[b]} overlaps {a} {ranges[a]}; pick disjoint CIDRs"))
    for name in ("serviceCidr", "podCidr"):
        if ranges[name].overlaps(net.address_space):
            problems.append(Problem(f"{key}.{name}", f"{ranges[name]} overlaps addressSpace {net.address_space}"))
    if net.dns_service_ip not in net.service_cidr:
        problems.append(
            Problem(f"{key}.dnsServiceIp", f"{net.dns_service_ip} is not inside serviceCidr {net.service_cidr}")
        )
    return problems


def required_secrets(target: str) -> set[str]:
    """Secrets a target cannot deploy without (Azure targets keep the HF token in Key Vault)."""
    return {"hfToken"} if target in AZURE_TARGETS else set()


def cross_check(s: StackSettings, present_secrets: set[str]) -> list[Problem]:
    """Rules that span keys. Runs only once every key parsed on its own."""
    k = f"{NAMESPACE}:"
    problems: list[Problem] = []
    if s.is_azure and not s.owner.strip():
        problems.append(Problem(f"{k}owner", "required for Azure targets (becomes the 'owner' tag)"))
    if s.environment == "test" and s.expires_on is None:
        problems.append(Problem(f"{k}expiresOn", "required when environment is 'test' (YYYY-MM-DD)"))
    for key in sorted(required_secrets(s.target) - present_secrets):
        problems.append(
            Problem(
                f"{k}{key}",
                f"required secret is not set for target {s.target}; run `pulumi config set --secret {key} <value>`",
            )
        )
    for i, cidr in enumerate(s.allowed_cidrs):
        if cidr.prefixlen == 0:
            problems.append(Problem(f"{k}allowedCidrs[{i}]", f"{cidr} admits the whole internet; list your networks"))
    if s.target == "vm" and not s.allowed_cidrs:
        problems.append(
            Problem(
                f"{k}allowedCidrs",
                "target vm needs at least one source CIDR, e.g. your public IP as a.b.c.d/32",
            )
        )
    if s.is_azure:
        problems += _overlap_problems(s.network)

    problems += _section_problems(s)
    problems += _gateway_problems(s)
    onnx = s.backends.onnx
    if onnx.enabled and onnx.conversion_target.split("-")[0] != ("cuda" if onnx.device == "gpu" else "cpu"):
        problems.append(
            Problem(
                f"{k}backends.onnx.conversion.target",
                f"{onnx.conversion_target} does not run on device {onnx.device}; "
                f"use {'cuda-int4 or cuda-fp16' if onnx.device == 'gpu' else 'cpu-int4 or cpu-fp32'}",
            )
        )
    problems += _device_problems(s)
    return problems


def _section_problems(s: StackSettings) -> list[Problem]:
    """Sections set for a target that does not use them (a sign of a mistaken target or stack file)."""
    k = f"{NAMESPACE}:"
    problems: list[Problem] = []
    explicit = s.model_fields_set
    for section, target in (("aks", "aks"), ("vm", "vm"), ("cluster", "cluster")):
        if section in explicit and s.target != target:
            problems.append(Problem(f"{k}{section}", f"only used by target {target}; remove it or change target"))
    for section in ("registry", "key_vault", "network"):
        if section in explicit and not s.is_azure:
            alias = to_camel(section)
            problems.append(Problem(f"{k}{alias}", "only used by Azure targets (aks, vm); remove it"))

    for section in ("storage", "addons"):
        if section in explicit and s.target == "vm":
            problems.append(Problem(f"{k}{section}", "only used by Kubernetes targets (aks, cluster); remove it"))
    return problems


def _gateway_problems(s: StackSettings) -> list[Problem]:
    k = f"{NAMESPACE}:gateway"
    gw = s.gateway
    problems: list[Problem] = []
    if gw.routing == "host" and gw.domain is None:
        problems.append(Problem(f"{k}.routing", "host routing needs gateway.domain (backends get <name>.<domain>)"))
    if gw.domain is not None and gw.acme_email is None:
        problems.append(Problem(f"{k}.acmeEmail", f"required with gateway.domain {gw.domain!r} (ACME account)"))
    if gw.acme_email is not None and gw.domain is None:
        problems.append(Problem(f"{k}.acmeEmail", "set, but gateway.domain is not: the certificate is self-signed"))
    if s.images.build == "remote" and not s.is_azure:
        problems.append(
            Problem(f"{NAMESPACE}:images.build", "remote builds use ACR Tasks (Azure targets); use local or none")
        )
    mon = s.monitoring
    if any(r.email_to for r in mon.receivers) and (mon.smtp_smarthost is None or mon.smtp_from is None):
        problems.append(
            Problem(f"{NAMESPACE}:monitoring.smtpSmarthost", "email receivers need smtpSmarthost and smtpFrom")
        )
    if gw.address is not None and s.target != "cluster":
        problems.append(Problem(f"{k}.address", f"only used by target cluster; {s.target} knows its own address"))
    if gw.internal_only and gw.domain is not None:
        problems.append(
            Problem(f"{k}.internalOnly", "an internal-only gateway cannot pass ACME's public HTTP-01 challenge")
        )
    prefixes: dict[str, str] = {}
    for name, backend in s.backends.enabled().items():
        prefix = backend.route_prefix or name
        if prefix in prefixes or prefix == "ui":
            problems.append(
                Problem(
                    f"{NAMESPACE}:backends.{name}.routePrefix",
                    f"{prefix!r} is already used by {prefixes.get(prefix, 'the web UI')}",
                )
            )
        prefixes[prefix] = name
    if s.web_ui.enabled and not s.backends.enabled():
        problems.append(Problem(f"{NAMESPACE}:webUi.enabled", "the web UI needs at least one enabled backend"))
    return problems


def _device_problems(s: StackSettings) -> list[Problem]:
    problems: list[Problem] = []
    for name, backend in s.backends.enabled().items():
        key = f"{NAMESPACE}:backends.{name}.device"
        if backend.device != "gpu":
            continue
        if s.target == "aks":
            pools = s.aks.gpu_pools
            if not pools:
                problems.append(Problem(key, "device gpu needs at least one entry in aks.gpuPools"))
            elif name == "vllm" and not any(GPU_SIZES[p.vm_size].meets_vllm_floor for p in pools):
                problems.append(
                    Problem(
                        key,
                        f"vLLM needs compute capability >= {VLLM_MIN_COMPUTE_CAPABILITY}; no GPU pool size meets it "
                        f"({', '.join(p.vm_size for p in pools)})",
                    )
                )
        elif s.target == "vm":
            size = GPU_SIZES.get(s.vm.size)
            if size is None:
                problems.append(Problem(key, f"device gpu needs a GPU VM size; vm.size is {s.vm.size!r}"))
            elif name == "vllm" and not size.meets_vllm_floor:
                problems.append(
                    Problem(
                        key,
                        f"vLLM needs compute capability >= {VLLM_MIN_COMPUTE_CAPABILITY}; "
                        f"{s.vm.size} has {size.gpu_model} ({size.compute_capability})",
                    )
                )
    return problems


def load() -> StackConfig:
    """Read and validate the whole stack configuration, or raise ConfigError listing every problem."""
    cfg = pulumi.Config(NAMESPACE)
    present_secrets = {key for key in SECRET_KEYS if cfg.get_secret(key) is not None}
    raw = _raw_values()
    try:
        # JSON mode: strict about types, yet lists become tuples and strings become CIDRs and dates.
        settings = StackSettings.model_validate_json(json.dumps(raw))
    except ValidationError as error:
        raise ConfigError(_problems_from(error)) from None
    problems = cross_check(settings, present_secrets)
    if problems:
        raise ConfigError(problems)
    required = required_secrets(settings.target)
    secrets = StackSecrets(
        hf_token=cfg.require_secret("hfToken") if "hfToken" in required else cfg.get_secret("hfToken"),
        kubeconfig=cfg.get_secret("kubeconfig"),
    )
    return StackConfig(settings, secrets, stack=pulumi.get_stack(), project=pulumi.get_project())

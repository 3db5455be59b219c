"""The serving engines' sections: replicas and resources, and each of vLLM, Ollama and ONNX."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails

from infra.config.base import _Model
from infra.config.types import CpuQuantity, HubModelId, MemoryQuantity, OllamaModelName, OllamaModelRef, RoutePrefix

Device = Literal["gpu", "cpu"]


class ConversionConfig(_Model):
    """How the ONNX backend's model is made (`python -m convert`)."""

    model: HubModelId = "microsoft/Phi-4-mini-instruct"
    revision: str = "main"
    # None: cpu-int4 for a CPU backend, cuda-int4 for a GPU one.
    target: Literal["cpu-int4", "cpu-fp32", "cuda-int4", "cuda-fp16"] | None = None
    method: Literal["olive", "builder"] = "olive"
    block_size: Literal[16, 32, 64, 128, 256] = 32
    accuracy_level: Annotated[int, Field(ge=0, le=4)] = 4
    # An already converted repository (e.g. microsoft/Phi-4-mini-instruct-onnx) instead of converting.
    prebuilt: str | None = None
    prebuilt_subfolder: str | None = None
    cpu: CpuQuantity = "2"
    memory: MemoryQuantity = "32Gi"
    # Give up after this long (a 3.8B model converts in well under an hour on 4 cores).
    deadline_minutes: Annotated[int, Field(ge=5, le=24 * 60)] = 180


class ResourcesConfig(_Model):
    """Requests for one replica; the memory request is also its limit (no overcommit of model memory)."""

    cpu: CpuQuantity = "2"
    memory: MemoryQuantity = "8Gi"


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
    route_prefix: RoutePrefix | None = None


class VllmBackendConfig(BackendConfig):
    model: HubModelId = "microsoft/Phi-4-mini-instruct"
    revision: str = "main"
    # The name clients pass as `model`; None: the model id.
    served_model_name: str | None = None
    max_model_len: Annotated[int, Field(ge=256, le=131072)] = 16384
    gpu_memory_utilization: Annotated[float, Field(gt=0.1, le=0.98)] = 0.90
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 64
    # Phi-4-mini writes tool calls as <|tool_call|>[...]<|/tool_call|>: our parser (shipped with the
    # stack, infra/backends/vllm_files/) reads them; vLLM's phi4_mini_json looks for functools[...].
    tool_call_parser: str | None = "phi4_mini_markers"
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes"] | None = None
    dtype: Literal["auto", "half", "bfloat16", "float16"] = "auto"
    resources: ResourcesConfig = ResourcesConfig(cpu="4", memory="24Gi")


class ModelVariantConfig(_Model):
    """An Ollama Modelfile variant of the base model: its own name, sampling and system prompt."""

    name: OllamaModelName
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.9
    system: str = ""


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
    model: OllamaModelRef = "phi4-mini:3.8b"
    variants: tuple[ModelVariantConfig, ...] = DEFAULT_VARIANTS
    num_parallel: Annotated[int, Field(ge=1, le=64)] = 4
    max_loaded_models: Annotated[int, Field(ge=1, le=16)] = 3
    flash_attention: bool = True
    # Keep models loaded: Ollama unloads after 5 idle minutes by default. "-1" keeps them forever.
    keep_alive: str = "-1"
    resources: ResourcesConfig = ResourcesConfig(cpu="4", memory="12Gi")

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
    # 3 CPUs: what a default system pool node (Standard_D4ds_v5) has left after AKS's reservations and
    # DaemonSets is 3.41 (infra/placement.py); the CPU backend runs there.
    resources: ResourcesConfig = ResourcesConfig(cpu="3", memory="8Gi")

    @property
    def conversion_target(self) -> str:
        return self.conversion.target or ("cuda-int4" if self.device == "gpu" else "cpu-int4")


class BackendsConfig(_Model):
    """`backends.<name>` for every engine in the registry (infra/backends/registry.py). The three
    built in are fields; an engine registered beside them is validated by its own config model."""

    model_config = ConfigDict(extra="allow")

    vllm: VllmBackendConfig = VllmBackendConfig()
    ollama: OllamaBackendConfig = OllamaBackendConfig()
    onnx: OnnxBackendConfig = OnnxBackendConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _registered(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> BackendsConfig:
        # Imported here: the registry imports the engines, which import this package.
        from infra.backends import registry  # noqa: PLC0415

        if not isinstance(data, dict):
            return handler(data)
        errors: list[InitErrorDetails] = []
        extras: dict[str, BackendConfig] = {}
        fields = {field.alias or name for name, field in cls.model_fields.items()}
        own: dict[str, Any] = {}
        for key, value in data.items():
            if key in fields:
                own[key] = value
            elif key in registry.names():
                try:
                    extras[key] = registry.kind(key).config_model.model_validate_json(json.dumps(value))
                except ValidationError as error:
                    errors += [_nested(key, item) for item in error.errors(include_url=False)]
            else:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": value})
        try:
            model = handler(own)
        except ValidationError as error:
            errors += [_nested(None, item) for item in error.errors(include_url=False)]
            model = None
        if errors or model is None:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        defaults = {k.name: k.config_model() for k in registry.kinds() if k.name not in fields and k.name not in extras}
        assert model.__pydantic_extra__ is not None
        model.__pydantic_extra__.update({**defaults, **extras})
        return model

    def get(self, name: str) -> BackendConfig:
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.__pydantic_extra__ or {})[name]

    def enabled(self) -> dict[str, BackendConfig]:
        """The enabled backends, in registry order."""
        from infra.backends import registry  # noqa: PLC0415

        configs = {name: self.get(name) for name in registry.names()}
        return {name: b for name, b in configs.items() if b.enabled}


def _nested(key: str | None, item: ErrorDetails) -> InitErrorDetails:
    """A pydantic error of an engine's own model, placed under its key."""
    loc = item["loc"] if key is None else (key, *item["loc"])
    details: InitErrorDetails = {"type": item["type"], "loc": loc, "input": item["input"]}
    if "ctx" in item:
        details["ctx"] = item["ctx"]
    return details

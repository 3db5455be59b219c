"""Conversion targets: what each one builds and what it needs to run."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    precision: str  # onnxruntime-genai builder precision
    execution_provider: str  # builder -e
    device: str  # "cpu" or "cuda": where the result runs (and is verified)
    bytes_per_parameter: float  # output size estimate

    @property
    def quantized(self) -> bool:
        return self.precision == "int4"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cpu-int4", "int4", "cpu", "cpu", 0.6),
        Target("cpu-fp32", "fp32", "cpu", "cpu", 4.0),
        Target("cuda-int4", "int4", "cuda", "cuda", 0.6),
        Target("cuda-fp16", "fp16", "cuda", "cuda", 2.0),
    )
}
DEFAULT_TARGET = "cpu-int4"

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

    @property
    def prunes_lm_head(self) -> bool:
        """The decoder computes logits for a prompt's last position only (the builder's
        prune_lm_head): the LM head is about a sixth of Phi-4-mini's prefill (a 200064-token
        vocabulary), and a 512-token chunk's logits for every position would be 410 MB. CPU models
        are served by the ONNX server's own decoder, which prefills one sequence at a time, so the
        last position is always the prompt's last token. CUDA models keep every position: they are
        served by onnxruntime-genai's static batches, whose padded prompts were not verified with a
        pruned head (no GPU here)."""
        return self.device == "cpu"


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

"""Load the converted model, generate greedily, and compare its logits with the PyTorch source."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from convert import errors
from convert.genai import genai
from convert.targets import Target

# Fixed prompts: plain text, code, the serving domain, and a longer sentence.
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Kubernetes schedules pods onto nodes that",
    "Small language models answer questions quickly because they",
)
# fp32 conversion must reproduce PyTorch's logits: measured max |diff| 6e-7 on the test model.
FP32_MAX_LOGIT_DIFF = 1e-3
GENERATED_TOKENS = 16


def load(model_dir: Path, device: str, threads: int) -> Any:
    """Load on `device`: "cpu" drops the providers genai_config.json names (a CUDA model's too)."""
    og = genai()
    config = og.Config(str(model_dir))
    if device == "cpu":
        config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def _prefill_logits(og: Any, model: Any, ids: list[int]) -> np.ndarray:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


def _prompt_logits(og: Any, model: Any, ids: list[int]) -> np.ndarray:
    """Logits at every prompt position, [positions, vocab]: one prefill, or, for a decoder whose LM
    head is pruned to the last position (CPU targets), one prefill per prefix."""
    logits = _prefill_logits(og, model, ids)
    if len(logits) == len(ids):
        return logits
    prefixes = [_prefill_logits(og, model, ids[:end])[-1] for end in range(1, len(ids))]
    return np.stack([*prefixes, logits[-1]])


def _generate(og: Any, model: Any, tokenizer: Any, prompt: str) -> dict[str, Any]:
    ids = tokenizer.encode(prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + GENERATED_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return {"prompt": prompt, "tokens": len(tokens), "text": tokenizer.decode(tokens)}


def _torch_logits(source_dir: Path, prompts_ids: list[list[int]]) -> list[np.ndarray]:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float().numpy() for ids in prompts_ids]


def verify(model_dir: Path, target: Target, device: str, threads: int, source_dir: Path | None) -> dict[str, Any]:
    og = genai()
    started = time.perf_counter()
    model = load(model_dir, device, threads)
    load_seconds = time.perf_counter() - started
    tokenizer = og.Tokenizer(model)
    generation = _generate(og, model, tokenizer, PROMPTS[0])
    if generation["tokens"] == 0:
        raise errors.VerificationFailed("the converted model loaded but generated no token")
    result: dict[str, Any] = {"device": device, "load_seconds": round(load_seconds, 3), "generation": generation}
    if source_dir is None:
        result["comparison"] = None
        return result

    prompts_ids = [list(map(int, tokenizer.encode(p))) for p in PROMPTS]
    reference = _torch_logits(source_dir, prompts_ids)
    agree = total = 0
    max_diff = 0.0
    for ids, expected in zip(prompts_ids, reference, strict=True):
        actual = _prompt_logits(og, model, ids)
        agree += int((actual.argmax(-1) == expected.argmax(-1)).sum())
        total += len(ids)
        max_diff = max(max_diff, float(np.abs(actual - expected).max()))
    comparison = {
        "prompts": len(PROMPTS),
        "positions": total,
        "top1_agreement": round(agree / total, 4),
        "max_logit_diff": max_diff,
        "tolerance": FP32_MAX_LOGIT_DIFF if target.precision == "fp32" else None,
    }
    result["comparison"] = comparison
    if target.precision == "fp32" and max_diff > FP32_MAX_LOGIT_DIFF:
        raise errors.VerificationFailed(
            f"fp32 logits differ from PyTorch by {max_diff:.2e} (tolerance {FP32_MAX_LOGIT_DIFF:.0e})"
        )
    return result

"""What the server needs from a model folder's genai_config.json (written by onnxruntime-genai's
model builder), read directly: the decoder's file and I/O names, its KV-cache shape, the context,
the end-of-sequence and pad ids, and the execution provider."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    decoder_path: Path
    layers: int
    kv_heads: int
    head_size: int
    vocab_size: int
    context_length: int
    eos_ids: frozenset[int]
    pad_id: int
    input_ids: str
    attention_mask: str
    logits: str
    past_keys: tuple[str, ...]
    past_values: tuple[str, ...]
    present_keys: tuple[str, ...]
    present_values: tuple[str, ...]
    providers: tuple[str, ...]  # from decoder.session_options.provider_options, in order

    @property
    def uses_cuda(self) -> bool:
        return "cuda" in self.providers


def _providers(session_options: dict[str, Any]) -> tuple[str, ...]:
    names: list[str] = []
    for entry in session_options.get("provider_options", []):
        if isinstance(entry, dict):
            names += [str(name).lower() for name in entry]
    return tuple(names)


def read_model_config(model_dir: Path) -> ModelConfig:
    model = json.loads((model_dir / "genai_config.json").read_text())["model"]
    decoder = model["decoder"]
    inputs, outputs = decoder.get("inputs", {}), decoder.get("outputs", {})
    layers = int(decoder["num_hidden_layers"])
    eos = model.get("eos_token_id", [])

    def per_layer(template: str) -> tuple[str, ...]:
        return tuple(template % layer for layer in range(layers))

    return ModelConfig(
        decoder_path=model_dir / decoder["filename"],
        layers=layers,
        kv_heads=int(decoder["num_key_value_heads"]),
        head_size=int(decoder["head_size"]),
        vocab_size=int(model["vocab_size"]),
        context_length=int(model["context_length"]),
        eos_ids=frozenset(int(token) for token in (eos if isinstance(eos, list) else [eos])),
        pad_id=int(model.get("pad_token_id", 0)),
        input_ids=inputs.get("input_ids", "input_ids"),
        attention_mask=inputs.get("attention_mask", "attention_mask"),
        logits=outputs.get("logits", "logits"),
        past_keys=per_layer(inputs.get("past_key_names", "past_key_values.%d.key")),
        past_values=per_layer(inputs.get("past_value_names", "past_key_values.%d.value")),
        present_keys=per_layer(outputs.get("present_key_names", "present.%d.key")),
        present_values=per_layer(outputs.get("present_value_names", "present.%d.value")),
        providers=_providers(decoder.get("session_options", {})),
    )

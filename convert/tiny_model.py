"""A tiny random model with the reference architecture (Phi3ForCausalLM, GQA, partial rotary like
Phi-4-mini) and a byte-level BPE tokenizer trained here, with a chat template that renders tools.
Nothing is downloaded. Used by the tests and the benchmarks.

`python -m convert.tiny_model OUT [--hidden 512 --layers 8]`
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|tool|>",
    "<|/tool|>",
    "<|tool_call|>",
    "<|/tool_call|>",
)
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "small",
    "language",
    "models",
    "answer",
    "questions",
    "on",
    "kubernetes",
    "with",
    "onnx",
    "runtime",
    "vllm",
    "and",
    "ollama",
    "serving",
    "tokens",
    "per",
    "second",
    "latency",
    "gpu",
    "cpu",
    "memory",
    "cache",
    "json",
    "tool",
    "call",
    "weather",
    "city",
    "paris",
    "london",
    "tokyo",
    "function",
    "arguments",
    "name",
    "value",
    "true",
    "false",
    "null",
]
_PUNCTUATION = list("{}[]():,.\"'=<>/_-0123456789")

# Phi-4-mini's layout (system and tools first, tool calls in markers), kept small.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and tools %}"
    "<|system|>{{ message['content'] }}<|tool|>{{ tools | tojson }}<|/tool|><|end|>"
    "{% elif message['role'] == 'tool' %}<|user|>{{ message['content'] }}<|end|>"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] or '' }}<|end|>{% endif %}"
    "{% endfor %}"
    "{% if tools and not (messages and messages[0]['role'] == 'system') %}"
    "<|system|><|tool|>{{ tools | tojson }}<|/tool|><|end|>{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 512
    vocab: int = 512
    context: int = 512
    seed: int = 0


def _corpus(rng: random.Random, lines: int = 3000) -> list[str]:
    pieces = _WORDS + _PUNCTUATION
    return [" ".join(rng.choice(pieces) for _ in range(24)) for _ in range(lines)]


def build(out: Path, spec: TinySpec = TinySpec()) -> Path:
    """Write config, random weights, tokenizer and chat template to `out`."""
    import torch  # noqa: PLC0415 (heavy)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
    from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast  # noqa: PLC0415

    # onnxruntime's GroupQueryAttention needs the rotary half-dimension to be a multiple of 8.
    head_size = spec.hidden // spec.heads
    if (int(head_size * 0.75) // 2) % 8:
        raise ValueError(f"hidden/heads = {head_size}: 0.75 x head size / 2 must be a multiple of 8 (e.g. 64, 128)")

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)  # noqa: S311 (reproducible training text, not secrets)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[assignment]
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(rng), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    end_id = fast.convert_tokens_to_ids("<|end|>")
    special = {"bos": fast.bos_token_id, "eos": fast.eos_token_id, "pad": fast.pad_token_id}
    settings: dict[str, Any] = {
        "vocab_size": len(fast),
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "max_position_embeddings": spec.context,
        "original_max_position_embeddings": spec.context,
        # Phi-4-mini rotates 3/4 of each head.
        "partial_rotary_factor": 0.75,
        "tie_word_embeddings": True,
        "bos_token_id": special["bos"],
        "eos_token_id": [end_id, special["eos"]],
        "pad_token_id": special["pad"],
    }
    config = Phi3Config(**settings)
    torch.manual_seed(spec.seed)
    model = Phi3ForCausalLM(config)
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m convert.tiny_model", description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=TinySpec.hidden)
    parser.add_argument("--layers", type=int, default=TinySpec.layers)
    parser.add_argument("--heads", type=int, default=TinySpec.heads)
    parser.add_argument("--kv-heads", type=int, default=TinySpec.kv_heads)
    parser.add_argument("--intermediate", type=int, default=TinySpec.intermediate)
    args = parser.parse_args()
    spec = TinySpec(args.hidden, args.layers, args.heads, args.kv_heads, args.intermediate)
    print(build(args.out, spec))


if __name__ == "__main__":
    main()

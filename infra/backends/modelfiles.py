"""Ollama's server settings, and Modelfiles for the configured variants of the base model (shared by
the VM and Kubernetes).

Ollama's Modelfile parser has no escape character: a `\"\"\"` block ends at the first line break that
follows `\"\"\"` (spaces aside). A system prompt that itself contains `\"\"\"` would end the block early and
turn the rest of the prompt into commands, so every `\"\"\"` in it is written as `'''` (in the code
snippets such a prompt usually quotes, a Python docstring delimiter either way).
"""

from __future__ import annotations

from infra.config import ModelVariantConfig, OllamaBackendConfig

TRIPLE_QUOTE = '"""'


def system_prompt(variant: ModelVariantConfig) -> str:
    """The system prompt as the Modelfile carries it."""
    return variant.system.replace(TRIPLE_QUOTE, "'''")


def modelfile(base: str, variant: ModelVariantConfig) -> str:
    """`ollama create <variant.name> -f <this>`: the base model with the variant's sampling and prompt."""
    lines = [
        f"FROM {base}",
        f"PARAMETER temperature {variant.temperature:g}",
        f"PARAMETER top_p {variant.top_p:g}",
    ]
    if variant.system:
        lines.append(f"SYSTEM {TRIPLE_QUOTE}{system_prompt(variant)}{TRIPLE_QUOTE}")
    return "\n".join(lines) + "\n"


def server_environment(config: OllamaBackendConfig) -> dict[str, str]:
    """The `OLLAMA_*` settings from config; `OLLAMA_KEEP_ALIVE` keeps models loaded between requests."""
    return {
        "OLLAMA_NUM_PARALLEL": str(config.num_parallel),
        "OLLAMA_MAX_LOADED_MODELS": str(config.max_loaded_models),
        "OLLAMA_FLASH_ATTENTION": "1" if config.flash_attention else "0",
        "OLLAMA_KEEP_ALIVE": config.keep_alive,
    }

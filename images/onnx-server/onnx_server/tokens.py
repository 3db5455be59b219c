"""Text to token ids and back, with Hugging Face `tokenizers`, the reference implementation of the
model's tokenizer.json (onnxruntime-genai's tokenizer is not loaded: it comes with the weights).

Encoding runs off the event loop on one worker thread, first come first tokenised, so requests are
admitted in arrival order; the batch call releases the GIL while it encodes, so it stalls neither
the event loop nor the decode thread. Decoding streams token by token (DecodeStream), dropping
special tokens as onnxruntime-genai's stream decoder does.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


def special_tokens(model_dir: Path) -> dict[str, int]:
    """The tokenizer's special tokens, text -> id (from tokenizer.json's added tokens)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return {}
    added = json.loads(path.read_text()).get("added_tokens", [])
    return {t["content"]: int(t["id"]) for t in added if t.get("special") and isinstance(t.get("content"), str)}


def load_tokenizer(model_dir: Path) -> Any:
    tokenizer: Any = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TextStream:
    """A sequence's generated text, token by token; special tokens are dropped."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._stream: Any = DecodeStream(skip_special_tokens=True)

    def decode(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""


class PromptEncoder:
    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def load(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode_batch_fast([text])[0].ids)  # the batch call releases the GIL

    async def encode(self, text: str) -> list[int]:
        assert self._tokenizer is not None, "encode before the model loaded"
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, text)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""Prompt text to token ids, off the event loop and in arrival order.

onnxruntime-genai's `Tokenizer.encode` holds the GIL for its whole run (0.28 s for 1 MiB of text
here), so on a thread of its own it still stalls the event loop and the decode thread. Hugging
Face `tokenizers`, the reference implementation of tokenizer.json, releases the GIL while it
encodes; it is used when it gives genai's ids for a set of probe texts, genai's encoder otherwise.
One worker thread keeps first-come, first-tokenised, so requests are admitted in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("onnx_server.engine")
PROBES = (
    "",
    "hello",
    "The quick brown fox, 3.14159 and 42!",
    "héllo wörld 日本語 🎉 ∑",
    "  two  spaces\n\n\tnew line\r\n",
    "def f(x):\n    return {'a': [1, 2]}",
)
Encode = Callable[[str], list[int]]


def _fast_encoder(tokenizer_json: Path) -> Encode | None:
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415 (optional: genai's encoder is the fallback)
    except ImportError:
        return None
    try:
        tokenizer: Any = Tokenizer.from_file(str(tokenizer_json))
    except Exception:  # a tokenizer.json this version cannot read: use genai's own
        return None
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode_batch_fast([text])[0].ids)  # the batch call releases the GIL

    return encode


class PromptEncoder:
    def __init__(self) -> None:
        self._encode: Encode | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.kind = ""

    def load(self, model_dir: Path, reference: Encode, special: Iterable[str]) -> None:
        """Choose the encoder once the model's own tokenizer (`reference`) is loaded."""
        fast = _fast_encoder(model_dir / "tokenizer.json")
        probes = (*PROBES, "".join(special) + "x" + "".join(special))
        if fast is not None and all(fast(p) == reference(p) for p in probes):
            self._encode, self.kind = fast, "tokenizers"
        else:
            self._encode, self.kind = reference, "onnxruntime-genai"
        log.info("prompt tokenizer", extra={"encoder": self.kind})

    async def encode(self, text: str) -> list[int]:
        assert self._encode is not None, "encode before the model loaded"
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, text)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

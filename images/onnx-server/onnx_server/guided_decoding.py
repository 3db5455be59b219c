"""Guidance (guidance.py's grammars) enforced per sequence with llguidance, the library
onnxruntime-genai embeds: before a guided row's token is chosen, the tokens its grammar cannot
take next are masked out of that row's logits, so guided and free rows share a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from onnx_server.guidance import Guidance


class GrammarError(Exception):
    """The grammar (a client's schema or pattern) cannot be compiled."""


def grammar_tokenizer(tokenizer_json: Path, vocab_size: int, eos_ids: frozenset[int]) -> Any:
    # An end-of-sequence id outside the vocabulary can never be sampled (and llguidance refuses
    # it); with none left, llguidance takes the tokenizer's own.
    eos = sorted(token for token in eos_ids if token < vocab_size) or None
    return llguidance.LLTokenizer(str(tokenizer_json), n_vocab=vocab_size, eos_token=eos)


def _grammar(guidance: Guidance) -> str:
    kind, data = guidance
    try:
        if kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(data)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(data)
        if kind == "lark_grammar":
            return llguidance.LLMatcher.grammar_from_lark(data)
    except ValueError as error:
        raise GrammarError(str(error)) from None
    raise GrammarError(f"unknown guidance type {kind!r}")


class Guide:
    """One sequence's grammar state."""

    def __init__(self, tokenizer: Any, guidance: Guidance) -> None:
        self._matcher = llguidance.LLMatcher(tokenizer, _grammar(guidance), log_level=0)
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())
        self._bitmask = llg_numpy.allocate_token_bitmask(1, tokenizer.vocab_size)

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place (logits: [1, vocab])."""
        llg_numpy.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        llg_numpy.apply_token_bitmask_inplace(logits, self._bitmask)

    def accept(self, token: int) -> None:
        self._matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        """The grammar is complete (or broken): nothing but the end of the sequence may follow."""
        return self._matcher.is_stopped() or self._matcher.is_error()

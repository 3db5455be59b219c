"""Choosing a sequence's next token from its logits: greedy, or temperature / top-k / top-p
sampling from the request's own random generator, so a seeded request gives the same tokens alone
or in a batch (its row's logits are the same either way)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this, sampling is greedy decoding (its limit as the temperature goes to 0): dividing float32
# logits by a denormal temperature makes them infinite.
MIN_TEMPERATURE = 1e-6
SEED_RANGE = 1 << 64  # any integer seed, negative or huge, folds into the generator's range


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    guidance: tuple[str, str] | None = None  # (type, data): json_schema, regex or lark_grammar

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1


class TokenChooser:
    """One request's sampler; its generator is seeded once, so its draws follow its own steps."""

    def __init__(self, sampling: Sampling, vocab_size: int) -> None:
        self.sampling = sampling
        # top_k beyond the vocabulary is no limit at all.
        self.top_k = sampling.top_k if 0 < sampling.top_k < vocab_size else 0
        seed = None if sampling.seed is None else sampling.seed % SEED_RANGE
        self.random = np.random.default_rng(seed)

    def choose(self, logits: np.ndarray) -> int:
        if self.sampling.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / self.sampling.temperature
        # argpartition is linear; a full sort of a 200k vocabulary per row and step is not.
        top_k = self.top_k
        candidates = np.argpartition(-scaled, top_k - 1)[:top_k] if top_k else np.arange(len(scaled))
        weights = np.exp(scaled[candidates] - scaled[candidates].max())  # masked tokens (-inf) weigh 0
        probabilities = weights / weights.sum()
        top_p = self.sampling.top_p
        if top_p < 1.0:
            # The nucleus: the likeliest tokens whose probability reaches top_p (at least one).
            kept, cumulative = _likeliest(candidates, probabilities, top_p)
            keep = min(int(np.searchsorted(cumulative, top_p)) + 1, len(kept))
            kept, cumulative = kept[:keep], cumulative[:keep]
            draw = self.random.random() * cumulative[-1]
        else:
            draw = self.random.random()
            kept, cumulative = _likeliest(candidates, probabilities, draw)
        # Inverse CDF over the tokens from the likeliest down.
        return int(kept[min(int(np.searchsorted(cumulative, draw, side="right")), len(kept) - 1)])


def _likeliest(candidates: np.ndarray, probabilities: np.ndarray, mass: float) -> tuple[np.ndarray, np.ndarray]:
    """The likeliest candidates, most likely first, until their probability passes `mass` (or all
    of them), with their cumulative probability. Only that head is sorted: it is usually a few
    tokens of a large vocabulary."""
    head = min(64, len(candidates))
    while True:
        top = np.argpartition(-probabilities, head - 1)[:head] if head < len(candidates) else np.arange(head)
        top = top[np.argsort(-probabilities[top], kind="stable")]
        cumulative = np.cumsum(probabilities[top])
        if cumulative[-1] > mass or head == len(candidates):
            return candidates[top], cumulative
        head = min(head * 4, len(candidates))

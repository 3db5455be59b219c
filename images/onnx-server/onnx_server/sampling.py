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
        if self.top_k:
            # argpartition is linear; a full sort of a 200k vocabulary per row and step is not.
            candidates = np.argpartition(-scaled, self.top_k - 1)[: self.top_k]
        else:
            candidates = np.flatnonzero(np.isfinite(scaled))  # guidance masks tokens to -inf
        candidates = candidates[np.argsort(-scaled[candidates], kind="stable")]
        weights = np.exp(scaled[candidates] - scaled[candidates[0]])
        probabilities = weights / weights.sum()
        if self.sampling.top_p < 1.0:
            # The smallest prefix whose probability reaches top_p (at least the likeliest token).
            keep = int(np.searchsorted(np.cumsum(probabilities), self.sampling.top_p)) + 1
            probabilities = probabilities[:keep] / probabilities[:keep].sum()
            candidates = candidates[:keep]
        return int(candidates[self.random.choice(len(candidates), p=probabilities)])

"""Choosing a sequence's next token from its logits: greedy, or temperature / top-k / top-p
sampling from the request's own random generator, so a seeded request gives the same tokens alone
or in a batch as long as its row's logits are the same either way (the README says when
onnxruntime's int4 kernels round them apart)."""

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
        # float32 throughout, sums in float64: on a 200k vocabulary float64 made exp and the
        # partition several times slower, and sampling runs for every row at every step.
        scaled = np.asarray(logits, np.float32) / np.float32(self.sampling.temperature)
        candidates = None
        if self.top_k:  # argpartition is linear; sorting the vocabulary is not
            candidates = np.argpartition(-scaled, self.top_k - 1)[: self.top_k]
            scaled = scaled[candidates]
        weights = np.exp(scaled - scaled.max())  # the likeliest weighs 1, masked tokens (-inf) 0
        draw = self.random.random()
        if self.sampling.top_p < 1.0:
            nucleus, cumulative = _nucleus(weights, self.sampling.top_p)
            index = int(nucleus[_passing(cumulative, draw * cumulative[-1])])
        else:
            index = _inverse_cdf(weights, draw)
        return int(candidates[index]) if candidates is not None else index


# The nucleus search's thresholds, as weights relative to the likeliest token's: each is one linear
# pass over the vocabulary; below the last, every token with any weight is a candidate.
NUCLEUS_THRESHOLDS = tuple(4.0**-k for k in range(1, 17))
BLOCK = 1024  # tokens per partial sum of the inverse CDF


def _nucleus(weights: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The nucleus: the fewest likeliest tokens whose probability reaches `top_p` (at least one),
    with their cumulative weight. Thresholds fall until the tokens above one reach `top_p`; those
    above the one before are in the nucleus whatever their order, so only the band between the two
    is sorted (on a peaked distribution over a large vocabulary, a few tokens)."""
    target = top_p * float(weights.sum(dtype=np.float64))
    sure = np.empty(0, np.intp)
    upper = np.inf
    for threshold in NUCLEUS_THRESHOLDS:
        above = np.flatnonzero(weights >= threshold)
        if float(weights[above].sum(dtype=np.float64)) >= target:
            band = above[weights[above] < upper]
            break
        sure, upper = above, threshold
    else:
        band = np.flatnonzero((weights < upper) & (weights > 0))
    band = band[np.argsort(-weights[band], kind="stable")]
    tokens = np.concatenate([sure, band])
    cumulative = np.cumsum(weights[tokens], dtype=np.float64)
    keep = min(int(np.searchsorted(cumulative[len(sure) :], target)) + 1 + len(sure), len(tokens))
    return tokens[:keep], cumulative[:keep]


def _inverse_cdf(weights: np.ndarray, draw: float) -> int:
    """The token a uniform `draw` in [0, 1) picks, each with probability proportional to its
    weight. No order is needed for that, so nothing is sorted: partial sums of blocks find the
    draw's block, and only that block is summed token by token."""
    full = len(weights) // BLOCK * BLOCK
    sums = weights[:full].reshape(-1, BLOCK).sum(axis=1, dtype=np.float64)
    if full < len(weights):
        sums = np.append(sums, weights[full:].sum(dtype=np.float64))
    blocks = np.cumsum(sums)
    target = draw * blocks[-1]
    block = _passing(blocks, target)
    start = block * BLOCK
    inner = np.cumsum(weights[start : start + BLOCK], dtype=np.float64)
    return start + _passing(inner, target - (blocks[block - 1] if block else 0.0))


def _passing(cumulative: np.ndarray, target: float) -> int:
    """The first index whose cumulative weight passes `target`. A weightless token spans no
    interval, so it is never the one; if rounding puts `target` at the end, the last with weight."""
    index = int(np.searchsorted(cumulative, target, side="right"))
    if index < len(cumulative):
        return index
    return int(np.flatnonzero(np.diff(cumulative, prepend=0.0))[-1])

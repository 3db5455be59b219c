"""The ONNX server's sampler against Hugging Face transformers' logits warpers (temperature, then
top-k, then top-p over what is left: the semantics vLLM and OpenAI's parameters follow), by drawing:
on a small vocabulary token by token, and on Phi-4-mini's 200064-token vocabulary, where a row is
sampled at every decode step and must cost far less than the step."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import cast

import numpy as np
import pytest
import torch
from onnx_server.sampling import Sampling, TokenChooser
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

PHI4_VOCAB = 200064  # not a multiple of the inverse CDF's block: the last block is partial


def reference(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Each token's probability after transformers' warpers."""
    scores = torch.tensor(logits[None, :], dtype=torch.float32)
    ids = cast(torch.LongTensor, torch.zeros((1, 1), dtype=torch.long))  # the warpers do not read it
    scores = TemperatureLogitsWarper(sampling.temperature)(ids, scores)
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(ids, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(ids, scores)
    return torch.softmax(scores.double(), dim=-1)[0].numpy()


def draws(logits: np.ndarray, sampling: Sampling, count: int) -> np.ndarray:
    chooser = TokenChooser(sampling, len(logits))
    return np.asarray([chooser.choose(logits) for _ in range(count)])


def assert_matches(drawn: np.ndarray, expected: np.ndarray, groups: list[np.ndarray]) -> None:
    """Tokens the reference excludes are never drawn; each group's frequency is within five
    standard deviations of its reference probability."""
    excluded = np.flatnonzero(expected == 0)
    assert not np.isin(drawn, excluded).any(), f"drew excluded tokens {sorted(set(drawn[np.isin(drawn, excluded)]))}"
    for group in groups:
        p = float(expected[group].sum())
        frequency = float(np.isin(drawn, group).mean())
        sigma = (p * (1 - p) / len(drawn)) ** 0.5
        assert abs(frequency - p) <= 5 * sigma + 1e-9, (group[:5], frequency, p)


SMALL_CASES = [
    Sampling(temperature=1.0),
    Sampling(temperature=0.7, top_p=0.9),
    Sampling(temperature=1.3, top_p=0.5),
    Sampling(temperature=0.8, top_k=5),
    Sampling(temperature=1.0, top_k=12, top_p=0.8),
]


@pytest.mark.parametrize("sampling", SMALL_CASES, ids=str)
def test_each_token_is_drawn_as_often_as_transformers_weighs_it(sampling: Sampling) -> None:
    logits = (np.random.default_rng(1).standard_normal(40) * 2).astype(np.float32)
    logits[[3, 17, 31]] = -np.inf  # masked by a grammar
    expected = reference(logits, sampling)
    drawn = draws(logits, dataclasses.replace(sampling, seed=5), 20000)
    assert_matches(drawn, expected, [np.asarray([token]) for token in range(len(logits))])


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.6, top_p=0.95)], ids=str)
def test_a_grammar_that_allows_one_token_always_gets_it(sampling: Sampling) -> None:
    logits = np.full(PHI4_VOCAB, -np.inf, np.float32)
    logits[PHI4_VOCAB - 7] = -3.0  # in the last, partial block
    assert set(draws(logits, sampling, 50)) == {PHI4_VOCAB - 7}


def peaked_vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """Logits of a large vocabulary: a few dozen likely tokens, some in the last partial block,
    over a long tail that still holds a share of the probability."""
    rng = np.random.default_rng(2)
    logits = rng.standard_normal(PHI4_VOCAB).astype(np.float32)
    likely = np.concatenate([rng.choice(PHI4_VOCAB - 400, 30, replace=False), np.arange(PHI4_VOCAB - 5, PHI4_VOCAB)])
    logits[likely] = (12 + 2 * rng.standard_normal(len(likely))).astype(np.float32)
    return logits, likely


@pytest.mark.parametrize(
    "sampling",
    [Sampling(temperature=1.0), Sampling(temperature=0.8, top_p=0.9), Sampling(temperature=1.2, top_k=40, top_p=0.95)],
    ids=str,
)
def test_a_real_sized_vocabulary_is_sampled_as_transformers_weighs_it(sampling: Sampling) -> None:
    logits, likely = peaked_vocabulary()
    expected = reference(logits, sampling)
    drawn = draws(logits, dataclasses.replace(sampling, seed=9), 4000)
    tail = np.setdiff1d(np.arange(PHI4_VOCAB), likely)
    assert_matches(drawn, expected, [*(np.asarray([token]) for token in likely), tail])


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.9)], ids=str)
def test_a_row_on_a_real_sized_vocabulary_is_sampled_in_milliseconds(sampling: Sampling) -> None:
    # A generous bound: a decode step of Phi-4-mini on CPU samples every row in turn, and a sort
    # or a float64 pass over the vocabulary per row took over 10 ms here.
    logits, _ = peaked_vocabulary()
    chooser = TokenChooser(sampling, PHI4_VOCAB)
    times = []
    for _ in range(21):
        started = time.perf_counter()
        chooser.choose(logits)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.004, f"median {statistics.median(times) * 1e3:.1f} ms per row"

"""What a load run adds up to: throughput, percentiles of TTFT, inter-token and end-to-end latency,
and every error by kind (resets apart, as they are what a client cannot retry safely)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnx_server.loadgen import LoadRun

QUANTILES = (50, 95, 99)


@dataclass(frozen=True)
class Percentiles:
    """Seconds; NaN when there was nothing to measure."""

    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Percentiles:
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        # numpy's default (linear interpolation between closest ranks), as vLLM's benchmark uses.
        p50, p95, p99 = (float(v) for v in np.percentile(np.asarray(values, dtype=float), QUANTILES))
        return cls(p50, p95, p99)


@dataclass(frozen=True)
class Summary:
    requests: int
    completed: int
    errors: dict[str, int]  # kind -> count; empty when every request completed
    resets: int
    timed: int  # requests whose stream carried text, so their TTFT and gaps were measured
    tokens: int
    seconds: float
    ttft: Percentiles
    itl: Percentiles
    e2e: Percentiles

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        """Completed requests per second: a closed loop's capacity."""
        return self.completed / self.seconds if self.seconds else 0.0


def summarize(run: LoadRun) -> Summary:
    failed = [o for o in run.outcomes if o.error is not None]
    return Summary(
        requests=len(run.outcomes),
        completed=len(run.outcomes) - len(failed),
        errors=dict(Counter(str(o.error) for o in failed)),
        resets=sum(o.reset for o in failed),
        timed=sum(o.ttft is not None for o in run.outcomes),
        tokens=sum(o.tokens for o in run.outcomes),
        seconds=run.seconds,
        ttft=Percentiles.of([o.ttft for o in run.outcomes if o.ttft is not None]),
        itl=Percentiles.of([gap for o in run.outcomes for gap in o.itl]),
        e2e=Percentiles.of([o.e2e for o in run.outcomes if o.e2e is not None]),
    )

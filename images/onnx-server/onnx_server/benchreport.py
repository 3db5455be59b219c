"""The realistic benchmark's results: each server number beside the raw engine's from the same run,
issue 15's targets with pass/fail, a printed table and the JSON the README's table is filled from."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from onnx_server.benchstats import Summary

OPEN_LOOP_SHARE = 0.7  # --rate auto: this share of the closed loop's measured capacity
# The server's engine without HTTP (inprocess.py): one client's gap to the raw engine, less streaming.
ENGINE_RUN = "engine in-process, no HTTP"


@dataclass(frozen=True)
class Results:
    raw_single: Summary  # the workload's requests one at a time through the Generator loop
    raw_batch: Summary  # static batches of `clients` equal-length requests
    engine_single: Summary  # the workload one at a time through the server's engine in-process, no HTTP
    one_client: Summary  # the workload through the server, one client
    closed: Summary  # the workload through the server, `clients` closed-loop clients
    open: Summary  # the workload through the server at Poisson arrivals of `rate`
    clients: int
    rate: float
    rate_is_auto: bool
    # tok/s of the raw batches run before and after the closed loop (NaN: no batch after it);
    # far apart, the machine drifted during the run and the ratios carry it.
    raw_batch_halves: tuple[float, float]

    def runs(self) -> dict[str, tuple[Summary, str, float]]:
        """Each run, the raw run its throughput is compared with, and that ratio."""
        single, batch = self.raw_single.tokens_per_s, self.raw_batch.tokens_per_s
        return {
            "raw single stream": (self.raw_single, "", math.nan),
            f"raw static batch of {self.clients}": (self.raw_batch, "", math.nan),
            ENGINE_RUN: (self.engine_single, "raw single stream", _ratio(self.engine_single.tokens_per_s, single)),
            "server, 1 client": (self.one_client, "raw single stream", _ratio(self.one_client.tokens_per_s, single)),
            f"server, {self.clients} closed-loop clients": (
                self.closed,
                f"raw static batch of {self.clients}",
                _ratio(self.closed.tokens_per_s, batch),
            ),
            f"server, open loop {self.rate:.2f} req/s": (
                self.open,
                f"raw static batch of {self.clients}",
                _ratio(self.open.tokens_per_s, batch),
            ),
        }


@dataclass(frozen=True)
class Target:
    goal: str
    value: float
    bound: float
    at_least: bool  # the value must be >= bound (else <= bound)

    @property
    def passed(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound


def _ratio(value: float, base: float) -> float:
    return value / base if base and not math.isnan(base) else math.nan


def targets(results: Results) -> list[Target]:
    """Issue 15's targets; the open-loop ones are defined at 70% of capacity (`--rate auto`)."""
    n = results.clients
    lone = results.one_client.ttft.p50
    found = [
        Target(
            f"{n} closed-loop clients: tok/s vs raw static batch of {n}",
            _ratio(results.closed.tokens_per_s, results.raw_batch.tokens_per_s),
            0.9,
            at_least=True,
        ),
        Target(
            "1 client: tok/s vs raw single stream",
            _ratio(results.one_client.tokens_per_s, results.raw_single.tokens_per_s),
            0.95,
            at_least=True,
        ),
    ]
    if results.rate_is_auto:
        found += [
            Target("open loop at 70%: TTFT p50 vs a lone request's", _ratio(results.open.ttft.p50, lone), 2, False),
            Target("open loop at 70%: TTFT p99 vs a lone request's", _ratio(results.open.ttft.p99, lone), 5, False),
            Target("open loop at 70%: failed requests", results.open.requests - results.open.completed, 0, False),
        ]
    return found


def _ms(value: float) -> str:
    return f"{value * 1000:8.0f}" if not math.isnan(value) else f"{'-':>8}"


def table(results: Results) -> str:
    head = (
        f"{'run':34} {'req':>4} {'ok':>4} {'tok/s':>8} {'ratio':>6} {'req/s':>6} "
        f"{'TTFT p50':>8} {'p95':>8} {'p99':>8} {'ITL p50':>8} {'p95':>8} {'p99':>8} "
        f"{'E2E p50':>8} {'p95':>8} {'p99 ms':>8}"
    )
    lines = [head]
    notes = []
    for name, (run, base, ratio) in results.runs().items():
        shown = f"{ratio:6.2f}" if not math.isnan(ratio) else f"{'':6}"
        lines.append(
            f"{name:34} {run.requests:4d} {run.completed:4d} {run.tokens_per_s:8.1f} {shown} {run.requests_per_s:6.2f} "
            + " ".join(_ms(p) for p in (run.ttft.p50, run.ttft.p95, run.ttft.p99))
            + " "
            + " ".join(_ms(p) for p in (run.itl.p50, run.itl.p95, run.itl.p99))
            + " "
            + " ".join(_ms(p) for p in (run.e2e.p50, run.e2e.p95, run.e2e.p99))
        )
        failures = ", ".join(f"{count} x {kind}" for kind, count in sorted(run.errors.items())) or "none"
        compared = f"ratio to the {base}; " if base else ""
        timed = f"; TTFT and ITL from the {run.timed} of {run.requests} that streamed text"
        notes.append(f"  {name}: {compared}errors {failures}; connection resets {run.resets}{timed}")
        if name == f"raw static batch of {results.clients}":
            first, second = (f"{rate:.1f}" if not math.isnan(rate) else "-" for rate in results.raw_batch_halves)
            notes.append(f"    tok/s of its half before the closed loop {first}, of its half after it {second}")
    return "\n".join([*lines, "", *notes])


def target_lines(results: Results) -> str:
    lines = []
    for target in targets(results):
        sign = ">=" if target.at_least else "<="
        verdict = "PASS" if target.passed else "FAIL"
        lines.append(f"{verdict}  {target.goal}: {target.value:.2f} (target {sign} {target.bound:g})")
    if not results.rate_is_auto:
        lines.append("(open-loop targets are defined at 70% of capacity: run with --rate auto)")
    return "\n".join(lines)


def _summary_json(run: Summary) -> dict[str, Any]:
    data = asdict(run)
    data["tokens_per_s"] = run.tokens_per_s
    data["requests_per_s"] = run.requests_per_s
    return data


def _finite(value: Any) -> Any:
    """NaN (nothing measured) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def to_json(results: Results, context: dict[str, Any]) -> dict[str, Any]:
    return _finite(
        {
            **context,
            "clients": results.clients,
            "rate": results.rate,
            "rate_is_auto": results.rate_is_auto,
            "raw_batch_tokens_per_s_before_and_after_the_closed_loop": list(results.raw_batch_halves),
            "runs": {
                name: {**_summary_json(run), "ratio_to": base or None, "ratio": ratio}
                for name, (run, base, ratio) in results.runs().items()
            },
            "targets": [{**asdict(t), "passed": t.passed} for t in targets(results)],
        }
    )

"""`python -m delivery`: ephemeral test stacks and the endpoint smoke test.

    python -m delivery up --pr 123 --base dev [--ttl-days 2] [--hf-token-env HF_TOKEN] [--ready-minutes 75]
    python -m delivery destroy --pr 123
    python -m delivery sweep [--dry-run]
    python -m delivery smoke --stack pr-123 [--ca-file ca.crt | --ca-from-stack] [--ready-minutes 10]

Exit codes: 0 success; 1 a deployment, smoke test or teardown failed; 2 invalid input;
3 the Pulumi CLI is missing; 4 credentials are missing. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from delivery import ephemeral, preflight, readiness
from delivery.ca import CaFetchError, fetch_ca
from delivery.ephemeral import AZURE_TARGETS, Backend, DeliveryError, StackPlan
from delivery.readiness import BackendReadiness, ReadinessReport
from delivery.smoke import SmokeConfigError, SmokeReport, smoke_outputs, tls_verify

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_PULUMI = 3
EXIT_NO_CREDENTIALS = 4


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


BackendFactory = Callable[[Sequence[str]], Backend]


def _automation_backend(policy_packs: Sequence[str]) -> Backend:
    # Imported here: the other commands' input checks and the tests need no Pulumi CLI.
    from delivery.automation import AutomationBackend  # noqa: PLC0415

    return AutomationBackend(policy_packs=policy_packs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m delivery", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="create or update a test stack, then smoke-test it")
    name = up.add_mutually_exclusive_group(required=True)
    name.add_argument("--pr", help="pull request number: the stack is pr-<number>")
    name.add_argument("--slug", help="generic test stack: test-<slug>")
    up.add_argument("--base", default="dev", help="stack file whose config is copied (default: dev)")
    up.add_argument("--ttl-days", type=int, default=2, help="days until the expires-on date (default: 2)")
    up.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    up.add_argument("--hf-token-env", metavar="VAR", help="environment variable holding the Hugging Face token")
    up.add_argument("--policy-pack", dest="policy_packs", action="append", default=[], metavar="DIR")
    up.add_argument("--keep-on-failure", action="store_true", help="leave a failed stack for inspection")
    up.add_argument("--destroy-after", action="store_true", help="destroy the stack after a passing smoke test")
    _tls_arguments(up)
    up.add_argument(
        "--ready-minutes",
        type=_minutes,
        metavar="MINUTES",
        help="how long to wait for every backend to answer /models before the smoke test "
        "(default: the largest backends.*.startupMinutes plus 15)",
    )

    destroy = sub.add_parser("destroy", help="destroy and remove a test stack")
    target = destroy.add_mutually_exclusive_group(required=True)
    target.add_argument("--pr", help="pull request number")
    target.add_argument("--stack", help="stack name (pr-<number> or test-<slug>)")

    sweep = sub.add_parser("sweep", help="destroy every test stack past its expires-on date")
    sweep.add_argument("--dry-run", action="store_true", help="only print the decisions")

    smoke = sub.add_parser("smoke", help="smoke-test a deployed stack's endpoints")
    smoke.add_argument("--stack", required=True)
    _tls_arguments(smoke)
    smoke.add_argument(
        "--ready-minutes",
        type=_minutes,
        metavar="MINUTES",
        help="wait up to this long for every backend to answer /models first (default: no wait)",
    )
    return parser


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 24 * 60:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes from 0 to 1440")
    return value


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", type=Path, help="PEM CA bundle the gateway's certificate chains to")
    tls.add_argument("--ca-from-stack", action="store_true", help="read the stack's CA (kubectl or ssh)")
    tls.add_argument("--insecure", action="store_true", help="do not verify TLS (prints a warning)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")


def _require_pulumi(env: Mapping[str, str], azure: bool) -> None:
    problem = preflight.pulumi_cli_problem()
    if problem:
        raise CliError(problem, EXIT_NO_PULUMI)
    problem = preflight.backend_problem(env)
    if problem:
        raise CliError(problem, EXIT_NO_CREDENTIALS)
    if azure:
        problem = preflight.azure_problem(env)
        if problem:
            raise CliError(problem, EXIT_NO_CREDENTIALS)


def _smoke(args: argparse.Namespace) -> Callable[[Mapping[str, Any]], SmokeReport]:
    def run(outputs: Mapping[str, Any]) -> SmokeReport:
        ca_file: Path | None = args.ca_file
        with tempfile.TemporaryDirectory() as tmp:
            if args.ca_from_stack:
                ca_file = fetch_ca(outputs, Path(tmp) / "ca.crt")
            report = smoke_outputs(outputs, tls_verify(ca_file, args.insecure), args.timeout)
        print(report.table())
        return report

    return run


def _ready(args: argparse.Namespace, minutes: float) -> Callable[[Mapping[str, Any]], ReadinessReport]:
    def run(outputs: Mapping[str, Any]) -> ReadinessReport:
        budget = minutes * 60
        deadline = time.monotonic() + budget
        api_key = str(outputs.get("apiKey") or "")
        if not api_key:
            raise SmokeConfigError("the stack has no `apiKey` output")
        with tempfile.TemporaryDirectory() as tmp:
            ca_file: Path | None = args.ca_file
            if args.ca_from_stack:
                # The VM's proxy writes its CA when it first starts, some time after `up`.
                ca = readiness.retry_until(lambda: fetch_ca(outputs, Path(tmp) / "ca.crt"), deadline, CaFetchError)
                if isinstance(ca, CaFetchError):
                    results = [
                        BackendReadiness(e.backend, e.base_url, last=f"stack CA not readable: {ca}")
                        for e in readiness.parse_endpoints(outputs.get("endpoints"))
                    ]
                    return ReadinessReport(results, budget, budget)
                ca_file = ca
            remaining = max(deadline - time.monotonic(), 0.0)
            report = readiness.wait_until_ready(
                outputs.get("endpoints"),
                api_key,
                tls_verify(ca_file, args.insecure),
                budget_seconds=remaining,
                log=_log,
            )
        report.budget_seconds = budget
        _log(report.summary())
        return report

    return run


def plan_from_args(args: argparse.Namespace, env: Mapping[str, str], today: dt.date) -> StackPlan:
    name = ephemeral.pr_stack_name(args.pr) if args.pr is not None else ephemeral.test_stack_name(args.slug)
    base_config = ephemeral.read_base_config(args.base)
    overrides = dict(ephemeral.parse_override(o) for o in args.overrides)
    target = str({**base_config, **overrides}.get(ephemeral.full_key("target"), ""))
    secrets: dict[str, str] = {}
    if args.hf_token_env:
        token = env.get(args.hf_token_env, "")
        if not token:
            raise CliError(f"environment variable {args.hf_token_env} (--hf-token-env) is unset or empty", EXIT_USAGE)
        secrets["hfToken"] = token
    elif target in AZURE_TARGETS:
        raise CliError(
            f"base stack {args.base} deploys to {target}, which needs hfToken: pass --hf-token-env <VAR>", EXIT_USAGE
        )
    return ephemeral.merge_config(name, args.base, base_config, overrides, secrets, today=today, ttl_days=args.ttl_days)


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    backend_factory: BackendFactory = _automation_backend,
    today: dt.date | None = None,
) -> int:
    args = _parser().parse_args(argv)
    environment = dict(os.environ) if env is None else env
    day = today or dt.datetime.now(dt.UTC).date()
    try:
        return _dispatch(args, environment, backend_factory, day)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except DeliveryError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (SmokeConfigError, CaFetchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _log(message: str) -> None:
    print(f"[delivery] {message}", file=sys.stderr, flush=True)


def _dispatch(args: argparse.Namespace, env: Mapping[str, str], factory: BackendFactory, today: dt.date) -> int:
    if args.command == "up":
        plan = plan_from_args(args, env, today)
        if plan.dropped_secrets:
            _log(f"not copied from {plan.base} (encrypted for its own stack): {', '.join(plan.dropped_secrets)}")
        _require_pulumi(env, azure=plan.target in AZURE_TARGETS)
        minutes = args.ready_minutes
        if minutes is None:
            minutes = float(readiness.default_budget_minutes(plan.config))
        _log(f"after up: waiting up to {minutes:g} minutes for every backend (--ready-minutes)")
        result = ephemeral.run_lifecycle(
            factory(args.policy_packs),
            plan,
            _smoke(args),
            ready=_ready(args, minutes),
            keep_on_failure=args.keep_on_failure,
            destroy_after=args.destroy_after,
            log=_log,
        )
        if not result.ok:
            print(f"error: {result.failed_stage} failed for {plan.name}: {result.error}", file=sys.stderr)
            return EXIT_FAILED
        print(f"{plan.name}: up and smoke-tested; expires on {plan.expires_on.isoformat()}")
        return 0
    if args.command == "destroy":
        name = ephemeral.pr_stack_name(args.pr) if args.pr is not None else args.stack
        ephemeral.require_test_stack_name(name)
        _require_pulumi(env, azure=True)
        ephemeral.teardown(factory(()), name, _log)
        print(f"{name}: destroyed and removed")
        return 0
    if args.command == "sweep":
        _require_pulumi(env, azure=not args.dry_run)
        result = ephemeral.sweep(factory(()), today, dry_run=args.dry_run, log=_log)
        for decision in result.decisions:
            print(f"{decision.name}\t{decision.action}\t{decision.reason}")
        for name, error in result.failed.items():
            print(f"error: teardown of {name} failed: {error}", file=sys.stderr)
        return 0 if result.ok else EXIT_FAILED
    # smoke
    _require_pulumi(env, azure=False)
    stack = factory(()).select(args.stack)
    outputs = stack.outputs()
    if args.ready_minutes is not None:
        waited = _ready(args, args.ready_minutes)(outputs)
        if not waited.ok:
            print(f"error: {args.stack} is not ready: {waited.summary()}", file=sys.stderr)
            return EXIT_FAILED
    report = _smoke(args)(outputs)
    if not report.ok:
        print(f"error: smoke test of {args.stack} failed: {report.summary()}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())

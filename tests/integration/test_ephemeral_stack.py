"""A real ephemeral stack on Azure: up from dev's config, wait until every backend serves, smoke-test
every endpoint, destroy, remove.

Runs only where the Pulumi CLI, a Pulumi backend login, Azure credentials and a Hugging Face token
exist (CI's ephemeral environment, or a workstation after `az login` and `pulumi login`); anywhere
else it skips, naming what is missing. Optional: SLM_TEST_ALLOWED_CIDRS (a YAML list such as
[192.0.2.10/32]) admits this machine to the VM; without it the smoke test cannot reach the stack.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from delivery import ephemeral, preflight, readiness
from delivery.ca import CaFetchError, fetch_ca
from delivery.readiness import ReadinessReport
from delivery.smoke import SmokeReport, smoke_outputs, tls_verify
from offline.recording import PROJECT_ROOT


def missing_requirements(env: Mapping[str, str]) -> list[str]:
    missing: list[str] = []
    for problem in (preflight.pulumi_cli_problem(), preflight.backend_problem(env), preflight.azure_problem(env)):
        if problem:
            missing.append(problem)
    if not env.get("HF_TOKEN"):
        missing.append("HF_TOKEN (the Hugging Face token the Azure stack stores in Key Vault) is not set")
    return missing


def test_skip_reason_names_what_is_missing() -> None:
    problems = missing_requirements({})
    if preflight.pulumi_cli_problem() is not None:
        assert any("Pulumi CLI is not on PATH" in p for p in problems)
    assert any("HF_TOKEN" in p for p in problems)


@pytest.mark.slow
def test_ephemeral_stack_up_smoke_destroy() -> None:
    missing = missing_requirements(os.environ)
    if missing:
        pytest.skip("needs a real Pulumi and Azure: " + "; ".join(missing))

    from delivery.automation import AutomationBackend

    name = ephemeral.test_stack_name(secrets.token_hex(2))
    overrides: dict[str, Any] = {}
    if os.environ.get("SLM_TEST_ALLOWED_CIDRS"):
        overrides["allowedCidrs"] = yaml.safe_load(os.environ["SLM_TEST_ALLOWED_CIDRS"])
    plan = ephemeral.merge_config(
        name,
        "dev",
        ephemeral.read_base_config("dev"),
        overrides,
        {"hfToken": os.environ["HF_TOKEN"]},
        today=dt.datetime.now(dt.UTC).date(),
        ttl_days=1,
    )
    policy = ["policy"] if (PROJECT_ROOT / "policy" / "PulumiPolicy.yaml").exists() else []
    backend = AutomationBackend(policy_packs=policy)

    def smoke(outputs: Mapping[str, Any]) -> SmokeReport:
        with tempfile.TemporaryDirectory() as tmp:
            ca = fetch_ca(outputs, Path(tmp) / "ca.crt")
            report = smoke_outputs(outputs, tls_verify(ca, insecure=False))
        print(report.table())
        return report

    def ready(outputs: Mapping[str, Any]) -> ReadinessReport:
        budget = readiness.default_budget_minutes(plan.config) * 60.0
        deadline = time.monotonic() + budget
        with tempfile.TemporaryDirectory() as tmp:
            ca = readiness.retry_until(lambda: fetch_ca(outputs, Path(tmp) / "ca.crt"), deadline, CaFetchError)
            assert not isinstance(ca, CaFetchError), f"the stack's CA never became readable: {ca}"
            remaining = max(deadline - time.monotonic(), 0.0)
            verify = tls_verify(ca, insecure=False)
            report = readiness.wait_until_ready(
                outputs["endpoints"], str(outputs["apiKey"]), verify, budget_seconds=remaining, log=print
            )
        print(report.summary())
        return report

    result = ephemeral.run_lifecycle(backend, plan, smoke, ready=ready, destroy_after=True, log=print)
    assert result.ok, f"{result.failed_stage}: {result.error}"
    assert result.steps[-2:] == ["destroy", "remove"]
    assert name not in {ephemeral.short_name(s.name) for s in backend.list_stacks()}

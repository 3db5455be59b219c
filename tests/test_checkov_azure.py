"""checkov scans the ARM view of every Azure stack: zero failed checks, every skip with a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from offline import recording
from offline.arm import to_arm_template
from tests.checkov_support import checkov_results, needs_checkov
from tests.conftest import run_stack

pytestmark = needs_checkov
# Checks that ran and passed when this was written (prod 29, dev 22): a floor against silent empty scans.
MIN_PASSED = {"prod": 25, "dev": 20}


def scan(template: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template))
    return checkov_results(path, "arm")


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_azure_resources_pass_checkov(stack: str, tmp_path: Path) -> None:
    rec = run_stack(stack)
    template = to_arm_template(
        (r.type, r.name, recording.redact(r.inputs)) for r in rec.resources if r.type.startswith("azure-native:")
    )
    results = scan(template, tmp_path)
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in results["failed_checks"]]
    assert failed == []
    # A template checkov could not read scans nothing and "passes": insist on real coverage.
    assert len(results["passed_checks"]) >= MIN_PASSED[stack]
    for skipped in results["skipped_checks"]:
        assert skipped["check_result"].get("suppress_comment"), f"{skipped['check_id']} skipped without a reason"


def test_checkov_catches_a_violation(tmp_path: Path) -> None:
    """The scan is live: an ACR with its admin user on fails."""
    template = to_arm_template(
        [
            (
                "azure-native:containerregistry:Registry",
                "bad",
                {"sku": {"name": "Standard"}, "adminUserEnabled": True},
            )
        ]
    )
    results = scan(template, tmp_path)
    assert "CKV_AZURE_137" in {c["check_id"] for c in results["failed_checks"]}

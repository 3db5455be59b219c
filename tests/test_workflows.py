"""The GitHub workflows: zizmor, the workflow JSON schema, checkov, and this project's own rules.

Each checker also runs on a crafted bad workflow, so a checker that silently checks nothing fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from offline.recording import PROJECT_ROOT
from tests.checkov_support import CHECKOV, needs_checkov

WORKFLOWS_DIR = PROJECT_ROOT / ".github" / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.yml"))
BIN = Path(sys.executable).parent
ZIZMOR = BIN / "zizmor"
CHECK_JSONSCHEMA = BIN / "check-jsonschema"
SHA_PIN = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")
AZURE_LOGIN = "azure/login@"
# The one CKV_GHA_7 skip: workflow_dispatch's pull request number (validated, passed through env).
ALLOWED_CHECKOV_SKIPS = {("ephemeral.yml", "CKV_GHA_7")}

BAD_WORKFLOW = """\
name: bad
on:
  pull_request_target:
  issues:
    types: [opened]
permissions: write-all
jobs:
  greet:
    runs-on: ubuntu-latest
    permissions:
      id-token: write
    steps:
      - uses: actions/checkout@v4
      - run: echo "${{ github.event.issue.title }}"
"""


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True.
    value = workflow.get("on", workflow.get(True))
    if isinstance(value, str):
        return {value: None}
    if isinstance(value, list):
        return dict.fromkeys(value)
    assert isinstance(value, dict)
    return value


def steps(workflow: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(job_id, step) for job_id, job in workflow["jobs"].items() for step in job.get("steps", [])]


def rule_problems(path: Path) -> list[str]:
    """This project's own workflow rules; an empty list means the file follows them."""
    workflow = load(path)
    name = path.name
    problems: list[str] = []
    if "pull_request_target" in triggers(workflow):
        problems.append(f"{name}: pull_request_target runs untrusted code with the base repository's rights")
    top = workflow.get("permissions")
    if not isinstance(top, dict) or any(v != "read" for v in top.values()) or set(top) - {"contents"}:
        problems.append(f"{name}: top-level permissions must be read-only (contents: read), got {top!r}")
    for job_id, step in steps(workflow):
        uses = step.get("uses")
        if uses is not None and not uses.startswith("./") and not SHA_PIN.match(uses):
            problems.append(f"{name}/{job_id}: {uses} is not pinned by a 40-hex commit SHA")
        run = step.get("run")
        if run is not None and re.search(r"\$\{\{\s*(github\.event|inputs\.|github\.head_ref)", run):
            problems.append(f"{name}/{job_id}: untrusted input interpolated into run: (pass it through env:)")
        with_ = step.get("with") or {}
        if uses and uses.startswith("actions/checkout@") and with_.get("persist-credentials") is not False:
            problems.append(f"{name}/{job_id}: checkout without persist-credentials: false")
    return problems + _job_problems(name, workflow)


def _job_problems(name: str, workflow: dict[str, Any]) -> list[str]:
    """OIDC only where Azure is logged in to, and the login itself secretless."""
    problems: list[str] = []
    for job_id, job in workflow["jobs"].items():
        permissions = job.get("permissions")
        logs_in = any(str(step.get("uses", "")).startswith(AZURE_LOGIN) for step in job.get("steps", []))
        if not isinstance(permissions, dict):
            problems.append(f"{name}/{job_id}: no job-level permissions")
            continue
        if permissions.get("id-token") == "write" and not logs_in:
            problems.append(f"{name}/{job_id}: id-token: write in a job that does not log in to Azure")
        if logs_in and permissions.get("id-token") != "write":
            problems.append(f"{name}/{job_id}: logs in to Azure without id-token: write (OIDC)")
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith(AZURE_LOGIN):
                login = step.get("with") or {}
                if "creds" in login or "client-secret" in login:
                    problems.append(f"{name}/{job_id}: azure/login with a client secret; use OIDC")
                for key in ("client-id", "tenant-id", "subscription-id"):
                    if not str(login.get(key, "")).startswith("${{ vars."):
                        problems.append(f"{name}/{job_id}: azure/login {key} must come from vars")
    return problems


# Project rules ------------------------------------------------------------------------------------


def test_the_four_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} == {"pr.yml", "deploy.yml", "ephemeral.yml", "cleanup.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_follows_project_rules(path: Path) -> None:
    assert rule_problems(path) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_pin_names_its_version(path: Path) -> None:
    for line in path.read_text().splitlines():
        if re.match(r"^\s*(- )?uses:", line):
            assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), line


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_secrets_only_reach_env(path: Path) -> None:
    workflow = load(path)
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            for key in ("run", "with"):
                assert "secrets." not in json.dumps(step.get(key, "")), f"{path.name}/{job_id}: secret in {key}"
        assert "secrets." not in json.dumps(job.get("with", "")), f"{path.name}/{job_id}"


def test_pr_workflow_tests_then_previews_dev_and_prod_with_the_policy_pack() -> None:
    workflow = load(WORKFLOWS_DIR / "pr.yml")
    assert set(triggers(workflow)) == {"pull_request"}
    jobs = workflow["jobs"]
    assert any("scripts/test.py" in s.get("run", "") or ".ci/run" in s.get("run", "") for s in jobs["test"]["steps"])
    preview = jobs["preview"]
    assert preview["needs"] == "test"
    assert preview["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    assert preview["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    [pulumi] = [s for s in preview["steps"] if s.get("with", {}).get("command") == "preview"]
    assert pulumi["uses"].startswith("pulumi/actions@")
    assert pulumi["with"]["policyPacks"] == "policy"
    assert pulumi["with"]["comment-on-pr"] is True
    assert pulumi["with"]["stack-name"] == "${{ matrix.stack }}"
    assert "pull_request.number" in workflow["concurrency"]["group"]
    assert jobs["test"]["permissions"] == {"contents": "read"}


def test_deploy_runs_up_on_prod_behind_the_production_environment() -> None:
    workflow = load(WORKFLOWS_DIR / "deploy.yml")
    assert triggers(workflow) == {"push": {"branches": ["main"]}}
    [job] = workflow["jobs"].values()
    assert job["environment"] == "production"
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    runs = [s["run"] for s in job["steps"] if "run" in s]
    assert any(r.startswith("pulumi up --stack prod --yes --policy-pack policy") for r in runs)
    assert "required reviewers" in (WORKFLOWS_DIR / "deploy.yml").read_text()
    assert workflow["concurrency"]["cancel-in-progress"] is False


def test_ephemeral_workflow_creates_smokes_and_destroys_pr_stacks() -> None:
    workflow = load(WORKFLOWS_DIR / "ephemeral.yml")
    on = triggers(workflow)
    assert set(on) == {"pull_request", "workflow_dispatch"}
    assert on["pull_request"]["types"] == ["labeled", "synchronize", "closed"]
    assert "pr" in on["workflow_dispatch"]["inputs"]
    jobs = workflow["jobs"]
    up_run = next(s["run"] for s in jobs["up"]["steps"] if "delivery up" in s.get("run", ""))
    assert '--pr "$PR_NUMBER"' in up_run and "--base dev" in up_run and "--ttl-days" in up_run
    assert "deploy-test-stack" in jobs["up"]["if"] and "deploy-test-stack" in jobs["destroy"]["if"]
    assert "'closed'" in jobs["destroy"]["if"]
    destroy_run = next(s["run"] for s in jobs["destroy"]["steps"] if "delivery destroy" in s.get("run", ""))
    assert destroy_run.endswith('--pr "$PR_NUMBER"')
    for job in (jobs["up"], jobs["destroy"]):
        assert job["env"]["PR_NUMBER"] == "${{ github.event.pull_request.number || inputs.pr }}"


def test_cleanup_sweeps_on_a_schedule() -> None:
    workflow = load(WORKFLOWS_DIR / "cleanup.yml")
    on = triggers(workflow)
    assert set(on) == {"schedule", "workflow_dispatch"}
    assert on["schedule"][0]["cron"]
    [job] = workflow["jobs"].values()
    assert any(s.get("run", "").endswith("python -m delivery sweep") for s in job["steps"])


def test_project_rules_catch_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    problems = "\n".join(rule_problems(bad))
    assert "pull_request_target" in problems
    assert "top-level permissions must be read-only" in problems
    assert "actions/checkout@v4 is not pinned" in problems
    assert "untrusted input interpolated into run:" in problems
    assert "persist-credentials" in problems
    assert "id-token: write in a job that does not log in to Azure" in problems


# zizmor -------------------------------------------------------------------------------------------


def zizmor(path: Path) -> list[dict[str, Any]]:
    # auditor: every audit at every confidence; --no-config: no ignore file can hide a finding.
    command = [str(ZIZMOR), "--offline", "--no-config", "--persona", "auditor", "--format", "json", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.stdout.strip(), result.stderr
    findings = json.loads(result.stdout)
    assert isinstance(findings, list)
    return findings


def test_zizmor_finds_nothing() -> None:
    findings = zizmor(WORKFLOWS_DIR)
    assert [(f["ident"], f["desc"]) for f in findings] == []


def test_zizmor_catches_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(BAD_WORKFLOW)
    idents = {f["ident"] for f in zizmor(bad)}
    assert {"unpinned-uses", "template-injection", "dangerous-triggers", "artipacked"} <= idents


# JSON schema --------------------------------------------------------------------------------------


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [str(CHECK_JSONSCHEMA), "--builtin-schema", "vendor.github-workflows", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_the_schema(path: Path) -> None:
    result = check_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_a_bad_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\non: push\njobs:\n  x:\n    steps: not-a-list\n")
    result = check_schema(bad)
    assert result.returncode == 1
    assert "bad.yml" in result.stdout + result.stderr


# checkov ------------------------------------------------------------------------------------------


def checkov(repo: Path) -> dict[str, Any]:
    """checkov's github_actions results for a folder holding .github/workflows (it scans only there)."""
    command = [CHECKOV, "-d", str(repo), "--framework", "github_actions", "--skip-download", "-o", "json", "--compact"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    report = json.loads(result.stdout)
    report = report if isinstance(report, dict) else report[0]
    assert "results" in report, f"checkov scanned nothing: {report}"
    return report["results"]


@needs_checkov
def test_checkov_passes(tmp_path: Path) -> None:
    shutil.copytree(WORKFLOWS_DIR, tmp_path / ".github" / "workflows")
    results = checkov(tmp_path)
    assert [(c["check_id"], c["file_path"]) for c in results["failed_checks"]] == []
    skipped = {(Path(c["file_path"]).name, c["check_id"]) for c in results["skipped_checks"]}
    assert skipped <= ALLOWED_CHECKOV_SKIPS
    for check in results["skipped_checks"]:
        assert check["check_result"].get("suppress_comment"), "a skip needs a reason"
    assert len(results["passed_checks"]) > 50


@needs_checkov
def test_checkov_catches_a_bad_workflow(tmp_path: Path) -> None:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "bad.yml").write_text(BAD_WORKFLOW)
    failed = {c["check_id"] for c in checkov(tmp_path)["failed_checks"]}
    assert {"CKV_GHA_2", "CKV2_GHA_1"} <= failed

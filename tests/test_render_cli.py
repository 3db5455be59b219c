"""`python -m offline.render` as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from offline.recording import PROJECT_ROOT
from tests.conftest import STACKS


def render(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offline.render", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.mark.parametrize("stack", STACKS)
def test_render_writes_every_object(stack: str, tmp_path: Path) -> None:
    out = tmp_path / stack
    result = render("--stack", stack, "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resources"] == sum(summary["counts"].values())
    manifests = [yaml.safe_load(p.read_text()) for p in (out / "kubernetes").glob("*.yaml")]
    azure = [json.loads(p.read_text()) for p in (out / "azure").glob("*.json")]
    if stack == "prod":
        assert any(a["type"] == "azure-native:containerservice:AgentPool" for a in azure)
        assert summary["placeholderSecrets"] == ["slm-serving:hfToken"]
    if stack == "local":
        assert azure == [] and summary["placeholderSecrets"] == []
    if stack != "dev":
        assert {"apiVersion", "kind", "metadata"} <= set(manifests[0])
    text = "".join(p.read_text() for p in out.rglob("*.*"))
    assert "placeholder-not-a-real-secret" not in text
    assert "PRIVATE KEY" not in text
    # What a pull request's preview would post: the plan, the outputs and the policy pack's verdict.
    assert all(v == [] for v in json.loads((out / "policy.json").read_text()).values())
    preview = (out / "preview.md").read_text()
    assert f"## Preview of `{stack}`" in preview and "All 8 policies pass" in preview
    assert f"**{summary['resources']} resources to create.**" in preview
    assert "policy pack: all policies pass" in result.stdout


def test_preview_render_marks_unknowns(tmp_path: Path) -> None:
    result = render("--stack", "prod", "--out", str(tmp_path), "--preview")
    assert result.returncode == 0, result.stderr
    assert "(known after apply)" in (tmp_path / "summary.json").read_text()


def test_broken_stack_file_gives_a_complete_error_list_and_no_traceback(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for package in ("infra", "offline", "convert", "policy", "monitoring"):
        shutil.copytree(PROJECT_ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT_ROOT / "Pulumi.yaml", project)
    broken = yaml.safe_load((PROJECT_ROOT / "Pulumi.dev.yaml").read_text())
    broken["config"]["slm-serving:vm"] = {"size": "Standard_Z9", "dataDiskSizeGb": 0}
    broken["config"]["slm-serving:allowedCidrs"] = ["10.0.0.0/33"]
    broken["config"]["slm-serving:backends"]["tgi"] = {"enabled": True}
    (project / "Pulumi.dev.yaml").write_text(yaml.safe_dump(broken))
    result = render("--stack", "dev", "--out", str(tmp_path / "out"), cwd=project)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for key in ("vm.size", "vm.dataDiskSizeGb", "allowedCidrs[0]", "backends.tgi"):
        assert f"slm-serving:{key}:" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_stack_names_the_known_ones(tmp_path: Path) -> None:
    result = render("--stack", "staging", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "dev, local, prod" in result.stderr

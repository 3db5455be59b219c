"""Dockerfiles pass hadolint and checkov; image tags follow their build context."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.images import IMAGE_CONTEXTS, context_tag
from offline.recording import PROJECT_ROOT
from tests.checkov_support import checkov_results, needs_checkov

DOCKERFILES = sorted(PROJECT_ROOT.glob("images/*/Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def test_every_image_has_a_dockerfile_and_a_context() -> None:
    assert {p.parent.name for p in DOCKERFILES} == set(IMAGE_CONTEXTS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([str(HADOLINT), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_checkov
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_checkov(dockerfile: Path) -> None:
    results = checkov_results(dockerfile, "dockerfile")
    assert [c["check_id"] for c in results["failed_checks"]] == []
    assert len(results["passed_checks"]) >= 20


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_runs_as_a_fixed_non_root_user(dockerfile: Path) -> None:
    users = [line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert users[-1].split(":")[0].isdigit(), "a numeric UID lets Kubernetes verify runAsNonRoot"


def test_tag_follows_the_build_context(tmp_path: Path) -> None:
    for relative in IMAGE_CONTEXTS["converter"]:
        shutil.copytree(PROJECT_ROOT / relative, tmp_path / relative, ignore=shutil.ignore_patterns("__pycache__"))
    before = context_tag(IMAGE_CONTEXTS["converter"], tmp_path)
    assert before == context_tag(IMAGE_CONTEXTS["converter"], PROJECT_ROOT)
    assert len(before) == 16 and before != "latest"
    (tmp_path / "convert" / "key.py").write_text((tmp_path / "convert" / "key.py").read_text() + "\n# changed\n")
    assert context_tag(IMAGE_CONTEXTS["converter"], tmp_path) != before

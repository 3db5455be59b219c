"""checkov runs from its own venv (it pins packaging<24, which conflicts with pulumi)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from offline.recording import PROJECT_ROOT

CHECKOV = os.environ.get("SLM_CHECKOV", str(PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"))
needs_checkov = pytest.mark.skipif(
    not Path(CHECKOV).exists(), reason=f"checkov not installed at {CHECKOV} (scripts/test.py installs it)"
)


def checkov_results(path: Path, framework: str) -> dict[str, Any]:
    """checkov's results (passed, failed, skipped checks) for one file, offline."""
    result = subprocess.run(
        [CHECKOV, "-f", str(path), "--framework", framework, "--skip-download", "-o", "json", "--compact"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    report = json.loads(result.stdout)
    return (report if isinstance(report, dict) else report[0])["results"]

"""`pulumi up` can import and run the program: main is infra/, and the project root is not on sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from offline.recording import PROJECT_ROOT
from offline.render import read_stack_config
from tests.conftest import STACKS, run_stack

DRIVER = Path(__file__).parent / "drivers" / "run_like_pulumi.py"


@pytest.mark.parametrize("stack", STACKS)
def test_program_runs_as_the_cli_runs_it(stack: str) -> None:
    stack_file = read_stack_config(stack)
    env = {
        **os.environ,
        "PULUMI_STACK": stack,
        "PULUMI_CONFIG": json.dumps(stack_file.config),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(stack_file.secret_keys),
    }
    env.pop("PYTHONPATH", None)
    # -P: don't put the working directory on sys.path (the CLI's host doesn't either).
    result = subprocess.run(
        [sys.executable, "-P", str(DRIVER)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ran = json.loads(result.stdout.strip().splitlines()[-1])
    recorded = run_stack(stack, preview=True)
    assert ran["resources"] == len(recorded.resources)
    assert ran["exports"] == sorted(recorded.exports)

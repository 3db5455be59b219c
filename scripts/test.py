#!/usr/bin/env python3
"""The test command: `python3 scripts/test.py [pytest args]`.

Needs only python3 and the package registries. Creates .venv (the program's and the tests' pinned,
hash-locked dependencies) and .venv-checkov (checkov pins packaging<24, which conflicts with pulumi),
reinstalling only when a lock file changes, then runs the whole suite.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENTS = {
    ".venv": "requirements-dev.txt",
    ".venv-checkov": "requirements-checkov.txt",
}


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def ensure_venv(name: str, lock: str) -> Path:
    env = ROOT / name
    lock_path = ROOT / lock
    digest = hashlib.sha256(lock_path.read_bytes()).hexdigest()
    stamp = env / ".lock-sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and _python(env).exists():
        return env
    print(f"[test] installing {lock} into {name}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [str(_python(env)), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--require-hashes", "--no-deps", "-r", str(lock_path)], check=True)
    stamp.write_text(digest + "\n")
    return env


def main() -> int:
    envs = {name: ensure_venv(name, lock) for name, lock in ENVIRONMENTS.items()}
    env = dict(os.environ)
    env["SLM_CHECKOV"] = str(envs[".venv-checkov"] / "bin" / "checkov")
    # Nothing in the suite may reach a cloud or a model hub.
    env.update({"HF_HUB_OFFLINE": "1", "PULUMI_SKIP_UPDATE_CHECK": "true"})
    command = [str(_python(envs[".venv"])), "-m", "pytest", "-n", "auto", *sys.argv[1:]]
    print("[test] " + " ".join(command), flush=True)
    result = subprocess.run(command, cwd=ROOT, env=env, check=False)
    if result.returncode == 5:
        print("[test] pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())

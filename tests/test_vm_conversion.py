"""The VM's model preparation across boots: the Compose project the program renders for `dev`, each
preparation service's entry (entrypoint, then command, as Compose joins them) run by the real
`/bin/sh` (dash, like the converter image's Debian bookworm base) against a temporary data folder.

First boot prepares; a boot with the ready file on the data disk starts nothing that needs the hub,
and runs without any network; a new revision is a new key, so it converts into a new folder.

Stand-ins, for what cannot run here (no Docker daemon):
- Docker Compose and its bind mount `/var/lib/slm-serving/<volume>:/models`: the service's argv is
  run directly with `/models` rewritten to a temporary folder. Per the Compose specification
  (compose-spec 2.x, services.entrypoint / services.command), `entrypoint` replaces the image's
  ENTRYPOINT and `command` follows it; a service without `entrypoint` runs the image's own, read
  here from images/converter/Dockerfile. Compose's interpolation turns `$$` into `$`.
- The converter (`python -m convert` in images/converter): a `python` first on PATH that records its
  arguments and, like the real one (convert/pipeline.py, the manifest is written last and the folder
  renamed into place), leaves `<out>/conversion.json`. The real converter is run in
  tests/test_convert.py and tests/test_onnx_gpu.py.
- Ollama (`ollama` in ollama/ollama:0.13.5): an `ollama` that records its arguments and succeeds
  (`serve` waits until stopped), so the pull script itself runs and writes its ready marker.
- A hub outage: `unshare -rn`, a new network namespace with only a loopback that is down.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.azure.vm import decode_custom_data
from infra.backends.conversion_plan import conversion_spec
from infra.config import ConversionConfig
from offline.recording import PROJECT_ROOT
from tests.conftest import run_stack, stack_value

VM = "azure-native:compute:VirtualMachine"
COMPOSE_FILE = "/opt/slm-serving/compose.yaml"
CONTAINER_MODELS = "/models"
CONVERTER_DOCKERFILE = PROJECT_ROOT / "images" / "converter" / "Dockerfile"
# A commit of the source model (any 40 hex digits: the stand-in never asks the hub).
NEW_REVISION = "0123456789abcdef0123456789abcdef01234567"

RECORDING_CONVERTER = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
out=""
while [ $# -gt 0 ]; do
  if [ "$1" = "--out" ]; then out="$2"; fi
  shift
done
mkdir -p "$out"
echo '{"key": "stand-in"}' > "$out/conversion.json"
"""
# `ollama serve` stays up until the script's exit trap stops it, as the real server does.
RECORDING_OLLAMA = """#!/bin/sh
printf 'ollama %s\\n' "$*" >> "$CALLS"
if [ "$1" = serve ]; then exec sleep 60; fi
"""


def compose(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    vm = run_stack("dev", overrides).one(VM).plain
    files = {
        f["path"]: f["content"]
        for f in yaml.safe_load(decode_custom_data(vm["osProfile"]["customData"]))["write_files"]
    }
    return yaml.safe_load(files[COMPOSE_FILE])


def image_entrypoint(dockerfile: Path) -> list[str]:
    line = next(line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT "))
    return json.loads(line.removeprefix("ENTRYPOINT "))


def service_argv(service: dict[str, Any], image_default: list[str], data: Path) -> list[str]:
    """What the container runs, with the data disk's folder where the container sees /models."""
    entrypoint = service.get("entrypoint", image_default)
    argv = [*entrypoint, *service.get("command", [])]
    return [arg.replace("$$", "$").replace(CONTAINER_MODELS, str(data)) for arg in argv]


class Boot:
    """Runs one service's entry the way a boot's `compose up` does, with recording stand-ins."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.data.mkdir()
        self.calls = tmp / "calls"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name, script in (("python", RECORDING_CONVERTER), ("ollama", RECORDING_OLLAMA)):
            (self.bin / name).write_text(script)
            (self.bin / name).chmod(0o755)

    def run(self, argv: list[str], offline: bool = False) -> subprocess.CompletedProcess[str]:
        prefix = ["unshare", "-rn"] if offline else []
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "CALLS": str(self.calls)}
        return subprocess.run([*prefix, *argv], env=env, capture_output=True, text=True, check=False, timeout=60)

    def called(self) -> list[str]:
        lines = self.calls.read_text().splitlines() if self.calls.exists() else []
        self.calls.unlink(missing_ok=True)
        return lines


def _onnx_with(**conversion: Any) -> dict[str, Any]:
    backends = stack_value("dev", "backends")
    backends["onnx"] = {**backends["onnx"], "conversion": {**backends["onnx"].get("conversion", {}), **conversion}}
    return backends


def _dev_key(**changes: Any) -> str:
    """The conversion key of the dev stack's ONNX backend (with `changes` to its conversion)."""
    conversion = {**stack_value("dev", "backends")["onnx"].get("conversion", {}), **changes}
    return conversion_spec(ConversionConfig.model_validate(conversion), "cpu-int4").key()


def _network_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True, check=False).returncode == 0


def test_conversion_runs_on_first_boot_only_and_a_new_revision_converts_again(tmp_path: Path) -> None:
    if not _network_namespaces():
        pytest.skip("unshare -rn (an unprivileged network namespace) is not available here")
    boot = Boot(tmp_path)
    entrypoint = image_entrypoint(CONVERTER_DOCKERFILE)
    key = _dev_key()
    argv = service_argv(compose()["services"]["convert"], entrypoint, boot.data)

    first = boot.run(argv)
    assert first.returncode == 0, first.stderr
    calls = boot.called()
    assert len(calls) == 1 and f"--out {boot.data}/{key}" in calls[0]
    assert (boot.data / key / "conversion.json").is_file()

    # Reboot with the model on the data disk and no network at all: nothing is converted or fetched.
    again = boot.run(argv, offline=True)
    assert again.returncode == 0, again.stderr
    assert boot.called() == []
    assert f"{boot.data}/{key}/conversion.json exists" in again.stdout

    # A new revision is a config change: a new key, converted into its own folder beside the old one.
    moved = service_argv(
        compose({"backends": _onnx_with(revision=NEW_REVISION)})["services"]["convert"], entrypoint, boot.data
    )
    new_key = _dev_key(revision=NEW_REVISION)
    assert new_key != key
    converted = boot.run(moved)
    assert converted.returncode == 0, converted.stderr
    calls = boot.called()
    assert len(calls) == 1 and f"--revision {NEW_REVISION}" in calls[0] and f"--out {boot.data}/{new_key}" in calls[0]
    assert (boot.data / new_key / "conversion.json").is_file() and (boot.data / key / "conversion.json").is_file()


def test_ollama_pull_runs_until_its_marker_exists(tmp_path: Path) -> None:
    if not _network_namespaces():
        pytest.skip("unshare -rn (an unprivileged network namespace) is not available here")
    boot = Boot(tmp_path)
    service = compose()["services"]["ollama-pull"]
    # The Ollama image's own ENTRYPOINT is `ollama`; this service always names its own.
    argv = service_argv(service, ["ollama"], boot.data)

    first = boot.run(argv)
    assert first.returncode == 0, first.stderr
    assert any(call.startswith("ollama pull ") for call in boot.called())
    assert [p.name for p in boot.data.glob(".ready-*")]

    again = boot.run(argv, offline=True)
    assert again.returncode == 0, again.stderr
    assert boot.called() == []

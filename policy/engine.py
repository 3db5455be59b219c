"""Run the policy pack the way the Pulumi CLI does, on a recorded stack.

Starts the pack with its own interpreter (its venv, `.venv-policy`) as `python -m pulumi.policy`,
reads the gRPC port it prints, and sends every registration as the engine does: an `AnalyzeRequest` per
resource and one `AnalyzeStackRequest`, properties in the engine's wire form (secrets in the secret
envelope, unknowns as the unknown sentinel in a preview). What comes back are the SDK's own
diagnostics, after its own deserialization. Used by `offline.render` and the tests; runs in the
program's environment (grpc and the analyzer protos come with the pulumi SDK).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

from offline import recording

POLICY_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = POLICY_DIR.parent
SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (the engine's wire signature)
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # the engine's unknown (string) sentinel


def policy_python() -> Path:
    """The pack's interpreter: $SLM_POLICY_PYTHON, else .venv-policy (scripts/test.py creates it)."""
    return Path(os.environ.get("SLM_POLICY_PYTHON", str(PROJECT_ROOT / ".venv-policy" / "bin" / "python")))


def available() -> bool:
    return policy_python().exists()


def to_wire(value: Any) -> Any:
    """A recorded value as the engine marshals it for an analyzer (secrets kept, unknowns kept)."""
    if isinstance(value, recording.Secret):
        return {SIG: SECRET_SIG, "value": to_wire(value.value)}
    if value is recording.UNKNOWN:
        return UNKNOWN
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def _struct(props: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(to_wire(props), struct)
    return struct


def _options(reg: recording.Registration) -> analyzer_pb2.AnalyzerResourceOptions:
    return analyzer_pb2.AnalyzerResourceOptions(
        protect=reg.protect,
        ignoreChanges=reg.ignore_changes,
        deleteBeforeReplace=reg.delete_before_replace,
        deleteBeforeReplaceDefined=True,
        additionalSecretOutputs=reg.additional_secret_outputs,
        parent=reg.parent,
    )


def analyze_request(reg: recording.Registration) -> analyzer_pb2.AnalyzeRequest:
    return analyzer_pb2.AnalyzeRequest(
        type=reg.type,
        properties=_struct(reg.inputs),
        urn=reg.urn,
        name=reg.name,
        options=_options(reg),
    )


def analyze_stack_request(regs: Sequence[recording.Registration]) -> analyzer_pb2.AnalyzeStackRequest:
    return analyzer_pb2.AnalyzeStackRequest(
        resources=[
            analyzer_pb2.AnalyzerResource(
                type=r.type,
                properties=_struct(r.inputs),
                urn=r.urn,
                name=r.name,
                options=_options(r),
                parent=r.parent,
                dependencies=r.depends_on,
            )
            for r in regs
        ]
    )


@dataclass
class Verdict:
    """The pack's answer: mandatory violations by policy, and what it could not judge (advisory)."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    advisories: list[str] = field(default_factory=list)

    def failed(self) -> dict[str, list[str]]:
        return {name: found for name, found in self.violations.items() if found}


class Pack:
    """A running policy pack and a client for it, as the CLI holds them."""

    def __init__(self, python: Path | None = None) -> None:
        python = python or policy_python()
        if not python.exists():
            raise FileNotFoundError(
                f"the policy pack's Python {python} does not exist: create it from policy/requirements.txt "
                "(python3 scripts/test.py does) or set SLM_POLICY_PYTHON"
            )
        # As the CLI starts a Python pack: `python -m pulumi.policy <engine> <pack folder>`, which runs
        # the folder's __main__.py with the folder as sys.path[0]. No engine listens: the pack never
        # calls back for a policy run.
        # Its log goes to a file: a pipe nobody reads would stall the pack once full.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(  # noqa: S603 (the pack's own interpreter, fixed arguments)
            [str(python), "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(POLICY_DIR)],
            cwd=POLICY_DIR,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode().strip()
        if not line.isdigit():
            self.process.kill()
            self.process.communicate(timeout=10)
            self.log.seek(0)
            err = self.log.read().decode(errors="replace")[-2000:]
            self.log.close()
            raise RuntimeError(f"the policy pack did not print its port (got {line!r}): {err}")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)
        info = self.stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
        self.policies = [p.name for p in info.policies]

    def close(self) -> None:
        self.channel.close()
        self.process.kill()
        self.process.communicate(timeout=10)
        self.log.close()

    def analyze(self, regs: Iterable[recording.Registration]) -> Verdict:
        """Every registration through Analyze, then the whole stack through AnalyzeStack."""
        regs = list(regs)
        verdict = Verdict({name: [] for name in self.policies})
        found = [(r.name, d) for r in regs for d in self.stub.Analyze(analyze_request(r), timeout=60).diagnostics]
        found += [("", d) for d in self.stub.AnalyzeStack(analyze_stack_request(regs), timeout=60).diagnostics]
        for name, d in found:
            # The SDK puts the policy's description first; the rule's own message follows.
            message = d.message.split("\n", 1)[-1]
            where = f"{name}: " if name and name not in message else ""
            if d.enforcementLevel == analyzer_pb2.MANDATORY:
                verdict.violations.setdefault(d.policyName, []).append(where + message)
            else:
                verdict.advisories.append(f"{d.policyName}: {where}{message}")
        return verdict


@contextmanager
def running_pack(python: Path | None = None) -> Iterator[Pack]:
    pack = Pack(python)
    try:
        yield pack
    finally:
        pack.close()


def check_recording(rec: recording.Recording, python: Path | None = None) -> Verdict:
    with running_pack(python) as pack:
        return pack.analyze(rec.resources)

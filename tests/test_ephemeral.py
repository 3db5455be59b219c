"""Ephemeral test stacks (delivery/): naming, config merge, cleanup order, sweep decisions, the CLI's
errors, waiting for readiness, and the smoke test against the real ONNX server and local HTTP servers
(one that forgets authentication, one that starts serving late, one that never does)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from delivery import ephemeral, preflight, readiness
from delivery.__main__ import main
from delivery.ephemeral import (
    ConfigMergeError,
    NamingError,
    RefusedStackError,
    SecretValue,
    StackInfo,
    StackMeta,
    TeardownError,
)
from delivery.smoke import SmokeConfigError, SmokeReport, smoke_test, tls_verify
from offline.recording import PROJECT_ROOT
from tests.conftest import stack_value
from tests.server_support import API_KEY, Server

TODAY = dt.date(2025, 6, 10)
TOKEN = "hf_fake_token_0123456789abcdef"
NS = "slm-serving"


# A fake Pulumi backend ----------------------------------------------------------------------------


@dataclass
class FakeStack:
    backend: FakeBackend
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, SecretValue] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def configure(self, config: Mapping[str, Any], secrets: Mapping[str, SecretValue]) -> None:
        self.backend.calls.append(("configure", self.name))
        self.config, self.secrets = dict(config), dict(secrets)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def up(self) -> None:
        self.backend.calls.append(("up", self.name))
        if self.backend.fail_up:
            raise RuntimeError("error: resource creation failed:\n  quota exceeded")

    def outputs(self) -> dict[str, Any]:
        return self.backend.outputs

    def destroy(self) -> None:
        self.backend.calls.append(("destroy", self.name))
        if self.backend.fail_destroy:
            raise RuntimeError("destroy failed")


@dataclass
class FakeBackend:
    stacks: dict[str, FakeStack] = field(default_factory=dict)
    meta: dict[str, StackMeta] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    fail_up: bool = False
    fail_destroy: bool = False
    in_progress: set[str] = field(default_factory=set)

    def create_or_select(self, name: str) -> FakeStack:
        self.calls.append(("select", name))
        return self.stacks.setdefault(name, FakeStack(self, name))

    def select(self, name: str) -> FakeStack:
        self.calls.append(("select", name))
        if name not in self.stacks:
            raise KeyError(f"no stack named {name!r}")
        return self.stacks[name]

    def remove_stack(self, name: str) -> None:
        self.calls.append(("remove", name))
        del self.stacks[name]

    def list_stacks(self) -> list[StackInfo]:
        return [StackInfo(n, n in self.in_progress) for n in self.stacks]

    def metadata(self, name: str) -> StackMeta:
        self.calls.append(("metadata", name))
        return self.meta.get(name, StackMeta())


@dataclass
class Outcome:
    ok: bool

    def summary(self) -> str:
        return "ok" if self.ok else "onnx: chat: 500"


def plan(name: str = "pr-123", **overrides: Any) -> ephemeral.StackPlan:
    base = ephemeral.read_base_config("dev")
    return ephemeral.merge_config(name, "dev", base, overrides, {"hfToken": TOKEN}, today=TODAY, ttl_days=2)


# Naming -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "name"), [("1", "pr-1"), ("123", "pr-123"), (42, "pr-42"), ("999999999", "pr-999999999")]
)
def test_pr_stack_names(number: str | int, name: str) -> None:
    assert ephemeral.pr_stack_name(number) == name


@pytest.mark.parametrize(
    "number", ["0", "-1", "012", "1.5", "", " 12", "12 ", "1e3", "12; rm -rf /", "$(id)", "1234567890", 0, -3, True]
)
def test_invalid_pr_numbers_are_refused(number: str | int) -> None:
    with pytest.raises(NamingError, match="not a positive integer"):
        ephemeral.pr_stack_name(number)


def test_generic_test_stack_names() -> None:
    assert ephemeral.test_stack_name("gpu-a10") == "test-gpu-a10"
    for slug in ("", "-x", "x-", "UPPER", "a_b", "a" * 25, "a/b"):
        with pytest.raises(NamingError):
            ephemeral.test_stack_name(slug)


@pytest.mark.parametrize("name", ["prod", "dev", "local", "staging", "org/prod", "org/slm-serving/dev"])
def test_protected_names_are_refused(name: str) -> None:
    with pytest.raises(RefusedStackError, match="protected"):
        ephemeral.require_test_stack_name(name)


@pytest.mark.parametrize("name", ["feature-x", "pr-01", "pr-", "prod-copy", "test-"])
def test_other_names_are_not_test_stacks(name: str) -> None:
    assert not ephemeral.is_test_stack_name(name)
    with pytest.raises(RefusedStackError, match="not a test stack"):
        ephemeral.require_test_stack_name(name)


# Config merge -------------------------------------------------------------------------------------


def test_merge_copies_the_base_forces_test_settings_and_applies_overrides() -> None:
    result = plan(**{"allowedCidrs": ["192.0.2.10/32"], "vm": {"size": "Standard_NC4as_T4_v3", "spot": True}})
    assert result.name == "pr-123"
    config = result.config
    assert config[f"{NS}:target"] == "vm"
    assert config[f"{NS}:owner"] == "platform-team"
    assert config[f"{NS}:backends"]["onnx"] == stack_value("dev", "backends")["onnx"]  # copied unchanged
    assert config["pulumi:disable-default-providers"] == ["kubernetes"]
    assert config[f"{NS}:environment"] == "test"
    assert config[f"{NS}:expiresOn"] == "2025-06-12"
    assert result.expires_on == dt.date(2025, 6, 12)
    # Overrides replace whole keys and keep their types (lists, mappings, booleans).
    assert config[f"{NS}:allowedCidrs"] == ["192.0.2.10/32"]
    assert config[f"{NS}:vm"] == {"size": "Standard_NC4as_T4_v3", "spot": True}
    assert result.tags == {"expires-on": "2025-06-12", "environment": "test", "base-stack": "dev"}


def test_the_merged_config_is_valid_for_the_program() -> None:
    from infra.config import StackSettings, cross_check

    config = plan().config
    raw = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith(f"{NS}:")}
    settings = StackSettings.model_validate_json(json.dumps(raw))
    assert settings.environment == "test"
    assert settings.expires_on == dt.date(2025, 6, 12)
    assert cross_check(settings, {"hfToken"}) == []


def test_secrets_stay_secret() -> None:
    result = plan()
    assert result.secrets == {f"{NS}:hfToken": SecretValue(TOKEN)}
    assert f"{NS}:hfToken" not in result.config
    for text in (repr(result), str(result), repr(result.secrets), str(result.secrets[f"{NS}:hfToken"])):
        assert TOKEN not in text


def test_encrypted_base_values_are_dropped_not_copied(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.base.yaml").write_text(
        "config:\n  slm-serving:target: vm\n  slm-serving:hfToken:\n    secure: AAABAJx1\n"
        "  slm-serving:kubeconfig:\n    secure: AAABAJx2\n"
    )
    base = ephemeral.read_base_config("base", tmp_path)
    result = ephemeral.merge_config("pr-5", "base", base, {}, {"hfToken": TOKEN}, today=TODAY, ttl_days=1)
    assert result.dropped_secrets == (f"{NS}:kubeconfig",)
    assert not any(isinstance(v, dict) and "secure" in v for v in result.config.values())


@pytest.mark.parametrize("key", ["environment", "expiresOn", f"{NS}:environment"])
def test_forced_keys_cannot_be_overridden(key: str) -> None:
    with pytest.raises(ConfigMergeError, match="cannot be overridden"):
        plan(**{key: "prod"})


def test_a_secret_cannot_arrive_as_an_override() -> None:
    with pytest.raises(ConfigMergeError, match="is a secret"):
        plan(hfToken="plain-text")


@pytest.mark.parametrize("ttl", [0, -1, 15])
def test_ttl_bounds(ttl: int) -> None:
    with pytest.raises(ConfigMergeError, match="ttl"):
        ephemeral.merge_config("pr-1", "dev", {}, {}, {}, today=TODAY, ttl_days=ttl)


def test_azure_stack_names_fit_key_vault() -> None:
    with pytest.raises(NamingError, match="Key Vault"):
        plan(name="test-much-too-long")
    assert plan(name="pr-999999").name == "pr-999999"


def test_missing_base_stack_file_names_the_available_ones() -> None:
    with pytest.raises(ConfigMergeError, match=r"no stack file Pulumi\.nope\.yaml; available: .*dev"):
        ephemeral.read_base_config("nope")


def test_overrides_parse_as_yaml() -> None:
    assert ephemeral.parse_override("allowedCidrs=[192.0.2.1/32]") == (f"{NS}:allowedCidrs", ["192.0.2.1/32"])
    assert ephemeral.parse_override("vm.spot=true") == (f"{NS}:vm.spot", True)
    with pytest.raises(ConfigMergeError):
        ephemeral.parse_override("no-equals-sign")


# Lifecycle and cleanup order ----------------------------------------------------------------------


def test_success_keeps_the_stack_for_the_pull_request() -> None:
    backend = FakeBackend()
    result = ephemeral.run_lifecycle(backend, plan(), lambda _: Outcome(True))
    assert result.ok and not result.destroyed
    assert backend.calls == [("select", "pr-123"), ("configure", "pr-123"), ("up", "pr-123")]
    stack = backend.stacks["pr-123"]
    assert stack.tags["expires-on"] == "2025-06-12"
    assert stack.secrets[f"{NS}:hfToken"].value == TOKEN


def test_destroy_after_tears_down_in_order() -> None:
    backend = FakeBackend()
    result = ephemeral.run_lifecycle(backend, plan(), lambda _: Outcome(True), destroy_after=True)
    assert result.ok and result.destroyed
    assert backend.calls[-3:] == [("select", "pr-123"), ("destroy", "pr-123"), ("remove", "pr-123")]
    assert result.steps == ["select", "configure", "up", "smoke", "destroy", "remove"]
    assert backend.stacks == {}


def test_failed_up_destroys_then_removes() -> None:
    backend = FakeBackend(fail_up=True)
    smoked: list[object] = []
    result = ephemeral.run_lifecycle(backend, plan(), lambda o: smoked.append(o) or Outcome(True))
    assert not result.ok and result.failed_stage == "up" and result.destroyed
    assert "quota exceeded" in (result.error or "") and "\n" not in (result.error or "")
    assert smoked == []
    assert [c for c, _ in backend.calls] == ["select", "configure", "up", "select", "destroy", "remove"]


def test_failed_smoke_destroys_then_removes() -> None:
    backend = FakeBackend()
    result = ephemeral.run_lifecycle(backend, plan(), lambda _: Outcome(False))
    assert not result.ok and result.failed_stage == "smoke" and result.destroyed
    assert result.error == "onnx: chat: 500"
    assert [c for c, _ in backend.calls][-2:] == ["destroy", "remove"]
    assert backend.stacks == {}


@pytest.mark.parametrize("fail_up", [True, False])
def test_keep_on_failure_leaves_the_stack(fail_up: bool) -> None:
    backend = FakeBackend(fail_up=fail_up)
    result = ephemeral.run_lifecycle(backend, plan(), lambda _: Outcome(False), keep_on_failure=True)
    assert not result.ok and result.kept and not result.destroyed
    assert ("destroy", "pr-123") not in backend.calls
    assert "pr-123" in backend.stacks


def test_a_failed_destroy_keeps_the_stack_record() -> None:
    backend = FakeBackend(fail_up=True, fail_destroy=True)
    with pytest.raises(TeardownError, match="stack kept for a retry"):
        ephemeral.run_lifecycle(backend, plan(), lambda _: Outcome(True))
    assert ("remove", "pr-123") not in backend.calls
    assert "pr-123" in backend.stacks


def test_teardown_refuses_protected_stacks() -> None:
    backend = FakeBackend(stacks={})
    backend.stacks["prod"] = FakeStack(backend, "prod")
    with pytest.raises(RefusedStackError):
        ephemeral.teardown(backend, "prod")
    assert backend.calls == []


# Sweep --------------------------------------------------------------------------------------------


def test_sweep_destroys_only_expired_test_stacks() -> None:
    backend = FakeBackend()
    names = ["prod", "dev", "local", "pr-1", "pr-2", "pr-3", "test-gpu", "pr-4", "feature-x", "org/slm-serving/pr-9"]
    for name in names:
        backend.stacks[name] = FakeStack(backend, name)
    test_tags = {"environment": "test"}
    backend.meta = {
        "pr-1": StackMeta(tags={**test_tags, "expires-on": "2025-06-09"}),  # expired yesterday
        "pr-2": StackMeta(tags={**test_tags, "expires-on": "2025-06-10"}),  # expires today: kept
        "pr-3": StackMeta(tags={"expires-on": "2025-01-01"}, config={f"{NS}:environment": "prod"}),
        # No tags (a backend without them): the config of the last update decides.
        "test-gpu": StackMeta(config={f"{NS}:environment": "test", f"{NS}:expiresOn": "2025-06-01"}),
        "pr-4": StackMeta(tags=test_tags),
        "org/slm-serving/pr-9": StackMeta(tags={**test_tags, "expires-on": "2025-05-01"}),
    }
    backend.in_progress = set()
    result = ephemeral.sweep(backend, TODAY)
    actions = {d.name: d.action for d in result.decisions}
    assert actions == {
        "prod": "refuse",
        "dev": "refuse",
        "local": "refuse",
        "pr-1": "destroy",
        "pr-2": "keep",
        "pr-3": "refuse",
        "test-gpu": "destroy",
        "pr-4": "skip",
        "feature-x": "skip",
        "org/slm-serving/pr-9": "destroy",
    }
    assert result.destroyed == ["pr-1", "test-gpu", "org/slm-serving/pr-9"]
    touched = {name for _, name in backend.calls}
    assert not touched & {"prod", "dev", "local", "feature-x"}, "sweep read or changed a non-test stack"
    assert set(backend.stacks) == {"prod", "dev", "local", "pr-2", "pr-3", "pr-4", "feature-x"}


def test_sweep_dry_run_changes_nothing() -> None:
    backend = FakeBackend()
    backend.stacks["pr-1"] = FakeStack(backend, "pr-1")
    backend.meta["pr-1"] = StackMeta(tags={"environment": "test", "expires-on": "2020-01-01"})
    result = ephemeral.sweep(backend, TODAY, dry_run=True)
    assert [d.action for d in result.decisions] == ["destroy"]
    assert result.destroyed == [] and "pr-1" in backend.stacks


def test_sweep_skips_a_stack_being_updated_and_reports_failed_teardowns() -> None:
    backend = FakeBackend(fail_destroy=True)
    for name in ("pr-1", "pr-2"):
        backend.stacks[name] = FakeStack(backend, name)
        backend.meta[name] = StackMeta(tags={"environment": "test", "expires-on": "2020-01-01"})
    backend.in_progress = {"pr-2"}
    result = ephemeral.sweep(backend, TODAY)
    assert {d.name: d.action for d in result.decisions} == {"pr-1": "destroy", "pr-2": "skip"}
    assert not result.ok and "pr-1" in result.failed
    assert set(backend.stacks) == {"pr-1", "pr-2"}


def test_decide_refuses_protected_names_even_when_tagged_test() -> None:
    meta = StackMeta(tags={"environment": "test", "expires-on": "2000-01-01"})
    for name in ("prod", "dev", "local"):
        assert ephemeral.decide(StackInfo(name), meta, TODAY).action == "refuse"


# CLI ----------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """An environment with a Pulumi backend login and Azure OIDC variables, the HF token in HF_TOKEN."""
    return {
        "PULUMI_ACCESS_TOKEN": "pul-fake",
        "PULUMI_HOME": str(tmp_path / "pulumi-home"),
        "ARM_CLIENT_ID": "c",
        "ARM_TENANT_ID": "t",
        "ARM_SUBSCRIPTION_ID": "s",
        "ARM_USE_OIDC": "true",
        "HF_TOKEN": TOKEN,
    }


def _no_pulumi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.shutil, "which", lambda name: None)


def _has_pulumi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.shutil, "which", lambda name: f"/usr/bin/{name}" if name == "pulumi" else None)


def _unused_backend(_: object) -> FakeBackend:
    raise AssertionError("the backend must not be reached")


UP = ["up", "--pr", "123", "--base", "dev", "--hf-token-env", "HF_TOKEN"]


@pytest.mark.parametrize(
    "argv", [UP, ["destroy", "--pr", "123"], ["sweep"], ["smoke", "--stack", "pr-123"]], ids=lambda a: a[0]
)
def test_cli_without_the_pulumi_cli(
    argv: list[str], cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_pulumi(monkeypatch)
    assert main(argv, env=cli_env, backend_factory=_unused_backend, today=TODAY) == 3
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: the Pulumi CLI is not on PATH")
    assert TOKEN not in out + err


def test_cli_without_a_pulumi_backend_login(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _has_pulumi(monkeypatch)
    del cli_env["PULUMI_ACCESS_TOKEN"]
    assert main(UP, env=cli_env, backend_factory=_unused_backend, today=TODAY) == 4
    err = capsys.readouterr().err
    assert "no Pulumi backend credentials: set PULUMI_ACCESS_TOKEN or PULUMI_BACKEND_URL" in err


def test_cli_without_azure_credentials(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _has_pulumi(monkeypatch)
    for name in ("ARM_CLIENT_ID", "ARM_USE_OIDC"):
        del cli_env[name]
    assert main(UP, env=cli_env, backend_factory=_unused_backend, today=TODAY) == 4
    err = capsys.readouterr().err
    assert "no Azure credentials: ARM_CLIENT_ID (with ARM_USE_OIDC=true) not set" in err
    assert "the Azure CLI (az) is not installed" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["up", "--pr", "12a", "--base", "dev", "--hf-token-env", "HF_TOKEN"], "not a positive integer"),
        (["up", "--pr", "1", "--base", "dev"], "needs hfToken: pass --hf-token-env"),
        (["up", "--pr", "1", "--base", "dev", "--hf-token-env", "NOPE"], "NOPE (--hf-token-env) is unset or empty"),
        (["up", "--pr", "1", "--hf-token-env", "HF_TOKEN", "--set", "environment=prod"], "cannot be overridden"),
        (["destroy", "--stack", "prod"], "protected"),
        (["destroy", "--stack", "feature-x"], "not a test stack"),
    ],
)
def test_cli_input_errors(
    argv: list[str],
    message: str,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _has_pulumi(monkeypatch)
    assert main(argv, env=cli_env, backend_factory=_unused_backend, today=TODAY) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert TOKEN not in err


def test_cli_up_passes_the_secret_without_printing_it(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _has_pulumi(monkeypatch)
    backend = FakeBackend(fail_up=True)
    code = main([*UP, "--ttl-days", "3"], env=cli_env, backend_factory=lambda _: backend, today=TODAY)
    assert code == 1
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    assert "error: up failed for pr-123" in err
    assert backend.calls[-2:] == [("destroy", "pr-123"), ("remove", "pr-123")]


def test_cli_sweep_and_destroy(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _has_pulumi(monkeypatch)
    backend = FakeBackend()
    for name in ("prod", "pr-7", "pr-8"):
        backend.stacks[name] = FakeStack(backend, name)
    backend.meta["pr-7"] = StackMeta(tags={"environment": "test", "expires-on": "2025-06-01"})
    assert main(["sweep"], env=cli_env, backend_factory=lambda _: backend, today=TODAY) == 0
    out = capsys.readouterr().out
    assert "pr-7\tdestroy\texpired on 2025-06-01" in out and "prod\trefuse" in out
    assert main(["destroy", "--pr", "8"], env=cli_env, backend_factory=lambda _: backend, today=TODAY) == 0
    assert set(backend.stacks) == {"prod"}


def test_module_entry_point_reports_the_missing_cli(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "HF_TOKEN": TOKEN, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "delivery", *UP]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, check=False)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: the Pulumi CLI is not on PATH") and result.stderr.count("\n") == 1
    assert TOKEN not in result.stdout + result.stderr


# Smoke test ---------------------------------------------------------------------------------------

MODEL = "phi-4-mini-onnx"


@pytest.fixture(scope="module")
def onnx_server(served_model: Path) -> Iterator[Server]:
    running = Server(served_model, "--served-model-name", MODEL)
    yield running
    running.stop()


def endpoints_for(base: str, model: str = MODEL) -> dict[str, Any]:
    return {"gateway": {"address": "127.0.0.1"}, "backends": {"onnx": {"baseUrl": f"{base}/v1", "model": model}}}


@pytest.mark.slow
def test_smoke_passes_against_the_real_server(onnx_server: Server) -> None:
    report = smoke_test(endpoints_for(onnx_server.base), API_KEY, timeout=60)
    [result] = report.results
    assert (result.models_ok, result.chat_ok, result.unauthorized_ok, result.errors) == (True, True, True, [])
    assert report.ok and "onnx" in report.table()


@pytest.mark.slow
def test_smoke_reports_a_missing_model_and_a_wrong_key(onnx_server: Server) -> None:
    [missing] = smoke_test(endpoints_for(onnx_server.base, "other-model"), API_KEY, timeout=60).results
    assert not missing.models_ok and "/models lacks other-model" in missing.errors[0]
    [wrong] = smoke_test(endpoints_for(onnx_server.base), "not-the-key", timeout=60).results
    assert not wrong.ok and not wrong.models_ok and not wrong.chat_ok and wrong.unauthorized_ok
    assert all("not-the-key" not in e for e in wrong.errors)


class _OpenServer(BaseHTTPRequestHandler):
    """OpenAI-shaped answers to anyone: the authentication the smoke test must notice is missing."""

    def _json(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        message = {"role": "assistant", "content": "hello"}
        self._json(
            {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": MODEL,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            }
        )

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def open_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_smoke_fails_when_a_request_without_key_is_answered(open_server: str) -> None:
    report = smoke_test(endpoints_for(open_server), "any-key", timeout=10)
    [result] = report.results
    assert result.models_ok and result.chat_ok and not result.unauthorized_ok
    assert result.errors == ["request without a key answered 200, expected 401"]
    assert not report.ok and "FAIL" in report.table()


def test_smoke_cli_prints_a_table_and_fails_on_any_failure(
    open_server: str, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _has_pulumi(monkeypatch)
    backend = FakeBackend(outputs={"endpoints": endpoints_for(open_server), "apiKey": "k-secret-123"})
    backend.stacks["pr-5"] = FakeStack(backend, "pr-5")
    assert main(["smoke", "--stack", "pr-5"], env=cli_env, backend_factory=lambda _: backend) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["backend", "models", "chat", "401", "base", "URL", "/", "errors"]
    assert "onnx" in out and "expected 401" in err
    assert "k-secret-123" not in out + err


def test_smoke_needs_backends_and_a_key() -> None:
    with pytest.raises(SmokeConfigError, match="no `backends`"):
        smoke_test({}, "k")
    with pytest.raises(SmokeConfigError, match="apiKey"):
        smoke_test(endpoints_for("http://127.0.0.1:1"), "")
    assert not SmokeReport([]).ok


def test_tls_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tls_verify(None, insecure=False) is True
    with pytest.raises(SmokeConfigError, match="does not exist"):
        tls_verify(tmp_path / "missing.crt", insecure=False)
    with pytest.raises(SmokeConfigError, match="contradict"):
        tls_verify(tmp_path / "ca.crt", insecure=True)
    assert tls_verify(None, insecure=True) is False
    assert "warning: TLS verification is OFF" in capsys.readouterr().err


def test_preflight_accepts_an_earlier_pulumi_login(tmp_path: Path) -> None:
    home = tmp_path / ".pulumi"
    home.mkdir()
    assert preflight.backend_problem({"PULUMI_HOME": str(home)}) is not None
    (home / "credentials.json").write_text(json.dumps({"current": "https://api.pulumi.com"}))
    assert preflight.backend_problem({"PULUMI_HOME": str(home)}) is None
    assert preflight.azure_problem({}, which=lambda _: "/usr/bin/az", az_logged_in=lambda: True) is None
    assert "`az account show` fails" in str(
        preflight.azure_problem({}, which=lambda _: "/usr/bin/az", az_logged_in=lambda: False)
    )


# Readiness before the smoke test ------------------------------------------------------------------

READY_KEY = "k-ready-secret-42"


class _StartingServer(BaseHTTPRequestHandler):
    """A backend behind its gateway while the stack starts: 401 without the key, then 503 until
    `ready_at` (never, when None), then OpenAI-shaped answers."""

    ready_at: float | None = None

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serving(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {READY_KEY}":
            self._send(401, {"error": {"message": "missing or invalid API key"}})
            return False
        if self.ready_at is None or time.monotonic() < self.ready_at:
            self._send(503, {"error": {"message": "model loading"}})
            return False
        return True

    def do_GET(self) -> None:
        if self._serving():
            self._send(
                200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]}
            )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self._serving():
            message = {"role": "assistant", "content": "hello"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice]})

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def starting_server() -> Iterator[Callable[[float | None], str]]:
    """Start a `_StartingServer` ready after `delay` seconds (None: never); returns its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(delay: float | None) -> str:
        handler = type(
            "Handler",
            (_StartingServer,),
            {"ready_at": None if delay is None else time.monotonic() + delay},
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backends_at(**bases: str) -> dict[str, Any]:
    return {
        "gateway": {"address": "127.0.0.1"},
        "backends": {name: {"baseUrl": f"{base}/v1", "model": MODEL} for name, base in bases.items()},
    }


def test_readiness_waits_for_a_late_backend(starting_server: Callable[[float | None], str]) -> None:
    late, prompt = starting_server(1.5), starting_server(0)
    started = time.monotonic()
    report = readiness.wait_until_ready(
        backends_at(late=late, prompt=prompt), READY_KEY, budget_seconds=20, first_delay=0.2
    )
    assert report.ok, report.summary()
    by_name = {r.backend: r for r in report.results}
    assert by_name["prompt"].attempts == 1 and by_name["late"].attempts > 2
    assert 1.5 <= time.monotonic() - started < 10
    assert report.summary().startswith("all backends ready after")


def test_readiness_names_what_never_became_ready(starting_server: Callable[[float | None], str]) -> None:
    never, ready = starting_server(None), starting_server(0)
    down = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    report = readiness.wait_until_ready(
        backends_at(never=never, ready=ready, down=down), READY_KEY, budget_seconds=1.5, first_delay=0.2
    )
    assert 1.5 <= time.monotonic() - started < 5
    assert not report.ok
    by_name = {r.backend: r for r in report.results}
    assert by_name["ready"].ready
    assert (by_name["never"].ready, by_name["never"].last) == (False, "HTTP 503")
    assert not by_name["down"].ready and by_name["down"].last.startswith("ConnectError")
    summary = report.summary()
    assert summary.startswith("not ready within 2s: ")
    assert "never: HTTP 503" in summary and "down: ConnectError" in summary and "ready:" not in summary


def test_readiness_backs_off(starting_server: Callable[[float | None], str]) -> None:
    never = starting_server(None)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    report = readiness.wait_until_ready(
        backends_at(never=never), READY_KEY, budget_seconds=2, first_delay=0.1, max_delay=0.4, sleep=sleep
    )
    assert sleeps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.4])
    assert all(s <= 0.4 for s in sleeps) and report.results[0].attempts == len(sleeps) + 1


def test_a_wrong_key_is_not_ready(starting_server: Callable[[float | None], str]) -> None:
    report = readiness.wait_until_ready(
        backends_at(onnx=starting_server(0)), "not-the-key", budget_seconds=0, first_delay=0.1
    )
    assert not report.ok and report.results[0].last == "HTTP 401"
    assert "not-the-key" not in report.summary()


@pytest.mark.slow
def test_readiness_follows_the_real_server_while_it_loads(served_model: Path) -> None:
    # Polling starts as soon as the process listens, before the model is loaded.
    server = Server(served_model, "--served-model-name", MODEL, ready=False)
    try:
        report = readiness.wait_until_ready(
            endpoints_for(server.base), API_KEY, budget_seconds=60, first_delay=0.1, max_delay=0.5
        )
        assert report.ok, report.summary()
        [wrong] = readiness.wait_until_ready(endpoints_for(server.base), "wrong", budget_seconds=0).results
        assert (wrong.ready, wrong.last) == (False, "HTTP 401")
        assert smoke_test(endpoints_for(server.base), API_KEY, timeout=60).ok
    finally:
        server.stop()


def test_default_budget_is_the_slowest_startup_plus_a_margin() -> None:
    assert readiness.default_budget_minutes(plan().config) == 60 + readiness.MARGIN_MINUTES
    backends = {
        "vllm": {"enabled": True, "startupMinutes": 90},
        "ollama": {"enabled": True, "startupMinutes": 20},
        "onnx": {"enabled": False, "startupMinutes": 300},
    }
    assert readiness.default_budget_minutes(plan(backends=backends).config) == 90 + readiness.MARGIN_MINUTES


def _up_backend(endpoints: dict[str, Any]) -> FakeBackend:
    return FakeBackend(outputs={"endpoints": endpoints, "apiKey": READY_KEY})


def test_cli_up_waits_for_readiness_then_smoke_tests(
    starting_server: Callable[[float | None], str],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _has_pulumi(monkeypatch)
    monkeypatch.setattr(readiness, "FIRST_DELAY", 0.2)
    backend = _up_backend(backends_at(onnx=starting_server(1.0)))
    code = main([*UP, "--ready-minutes", "0.5"], env=cli_env, backend_factory=lambda _: backend, today=TODAY)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pr-123: up and smoke-tested" in out
    assert "waiting up to 0.5 minutes" in err and "onnx ready after" in err
    assert READY_KEY not in out + err
    assert ("destroy", "pr-123") not in backend.calls


def test_cli_up_reports_what_was_not_ready_and_destroys(
    starting_server: Callable[[float | None], str],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _has_pulumi(monkeypatch)
    monkeypatch.setattr(readiness, "FIRST_DELAY", 0.2)
    backend = _up_backend(backends_at(onnx=starting_server(0), vllm=starting_server(None)))
    code = main([*UP, "--ready-minutes", "0.02"], env=cli_env, backend_factory=lambda _: backend, today=TODAY)
    out, err = capsys.readouterr()
    assert code == 1
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: ready failed for pr-123: not ready within 1s: vllm: HTTP 503 (")
    assert "onnx:" not in line
    assert "backend" not in out  # the smoke test's table: never reached
    assert [c for c, _ in backend.calls][-3:] == ["select", "destroy", "remove"]
    assert READY_KEY not in out + err


def test_cli_up_default_budget_comes_from_the_stack(
    starting_server: Callable[[float | None], str],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _has_pulumi(monkeypatch)
    backend = _up_backend(backends_at(onnx=starting_server(0)))
    overrides = ["--set", "backends={vllm: {enabled: true, startupMinutes: 40}}"]
    assert main([*UP, *overrides], env=cli_env, backend_factory=lambda _: backend, today=TODAY) == 0
    assert f"waiting up to {40 + readiness.MARGIN_MINUTES} minutes" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "abc", "5000"])
def test_cli_refuses_a_bad_ready_budget(
    value: str, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*UP, "--ready-minutes", value], env=cli_env, backend_factory=_unused_backend, today=TODAY)
    assert exit_info.value.code == 2
    assert "--ready-minutes" in (err := capsys.readouterr().err) and "minutes from 0 to 1440" in err


def test_cli_smoke_can_wait_first(
    starting_server: Callable[[float | None], str],
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _has_pulumi(monkeypatch)
    backend = _up_backend(backends_at(onnx=starting_server(None)))
    backend.stacks["pr-5"] = FakeStack(backend, "pr-5")
    argv = ["smoke", "--stack", "pr-5", "--ready-minutes", "0"]
    assert main(argv, env=cli_env, backend_factory=lambda _: backend) == 1
    assert "error: pr-5 is not ready: not ready within 0s: onnx: HTTP 503" in capsys.readouterr().err


def test_the_workflow_passes_the_readiness_budget_through_env() -> None:
    import yaml

    workflow = yaml.safe_load((PROJECT_ROOT / ".github" / "workflows" / "ephemeral.yml").read_text())
    on = workflow.get("on", workflow.get(True))
    assert on["workflow_dispatch"]["inputs"]["ready-minutes"]["required"] is False
    [step] = [s for s in workflow["jobs"]["up"]["steps"] if "delivery up" in s.get("run", "")]
    assert step["env"]["READY_MINUTES"] == "${{ inputs.ready-minutes }}"
    assert 'args+=(--ready-minutes "$READY_MINUTES")' in step["run"]
    assert "inputs." not in step["run"]

"""Ephemeral test stacks: named after a pull request, configured from a base stack file, tagged to
expire, smoke-tested, and destroyed when the pull request closes or the expiry date has passed.

The decisions (names, config, expiry, cleanup order) are plain functions over a small `Backend`
protocol; `delivery.automation` adapts the Pulumi Automation API to it, and the tests use a fake.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

NAMESPACE = "slm-serving"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEST_ENVIRONMENT = "test"
# Stacks an automated sweep or teardown must never touch, whatever their config says.
PROTECTED_STACKS = frozenset({"prod", "dev", "local", "staging"})
# Stack tags (kept by the backend, so `sweep` can read them from a fresh checkout).
EXPIRES_TAG = "expires-on"
ENVIRONMENT_TAG = "environment"
MAX_TTL_DAYS = 14
AZURE_TARGETS = frozenset({"aks", "vm"})
# Key Vault names are at most 24 characters: "slm-<stack>-kv" plus the 8-character autoname suffix.
MAX_AZURE_STACK_NAME = 24 - len("slm-") - len("-kv") - 8

_PR_NUMBER = re.compile(r"^[1-9][0-9]{0,8}$")
_PR_NAME = re.compile(r"^pr-[1-9][0-9]{0,8}$")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
_TEST_NAME = re.compile(r"^test-[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")


class DeliveryError(Exception):
    """A problem the CLI reports as one line and an exit code."""

    exit_code = 1


class NamingError(DeliveryError):
    exit_code = 2


class ConfigMergeError(DeliveryError):
    exit_code = 2


class RefusedStackError(DeliveryError):
    exit_code = 2


class TeardownError(DeliveryError):
    exit_code = 1


# Naming ----------------------------------------------------------------------------------------


def pr_stack_name(number: str | int) -> str:
    """`pr-<number>` for a pull request number (a positive integer, no sign, no leading zeros)."""
    text = str(number) if isinstance(number, int) and not isinstance(number, bool) else number
    if not isinstance(text, str) or not _PR_NUMBER.match(text):
        raise NamingError(f"pull request number {number!r} is not a positive integer like 123")
    return f"pr-{text}"


def test_stack_name(slug: str) -> str:
    """`test-<slug>` for a generic test stack (lowercase letters, digits and inner hyphens)."""
    if not _SLUG.match(slug):
        raise NamingError(f"slug {slug!r}: use 1-24 lowercase letters, digits and inner '-'")
    return f"test-{slug}"


def short_name(name: str) -> str:
    """The stack's own name from `org/project/name`, `org/name` or `name`."""
    return name.rsplit("/", 1)[-1]


def is_test_stack_name(name: str) -> bool:
    short = short_name(name)
    return bool(_PR_NAME.match(short) or _TEST_NAME.match(short))


def require_test_stack_name(name: str) -> str:
    """The name itself, if automation may create or destroy it; refuses everything else."""
    short = short_name(name)
    if short in PROTECTED_STACKS:
        raise RefusedStackError(f"stack {name!r} is protected: only pr-<number> and test-<slug> stacks are handled")
    if not is_test_stack_name(name):
        raise RefusedStackError(f"stack {name!r} is not a test stack name (pr-<number> or test-<slug>)")
    return name


# Config ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretValue:
    """A secret config value: never shown by repr, str or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "SecretValue([secret])"

    def __str__(self) -> str:
        return "[secret]"


@dataclass(frozen=True)
class StackPlan:
    """Everything `up` needs for one test stack; config keys are fully qualified (`slm-serving:x`)."""

    name: str
    base: str
    config: dict[str, Any]
    secrets: dict[str, SecretValue]
    expires_on: dt.date
    tags: dict[str, str]
    dropped_secrets: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return str(self.config.get(f"{NAMESPACE}:target", ""))


def full_key(key: str) -> str:
    return key if ":" in key else f"{NAMESPACE}:{key}"


def read_base_config(base: str, root: Path = PROJECT_ROOT) -> dict[str, Any]:
    """The `config:` block of Pulumi.<base>.yaml, keys fully qualified, values as written."""
    if base not in PROTECTED_STACKS and not re.match(r"^[a-z][a-z0-9-]{0,30}$", base):
        raise ConfigMergeError(f"base stack {base!r} is not a stack name")
    path = root / f"Pulumi.{base}.yaml"
    if not path.exists():
        available = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise ConfigMergeError(f"no stack file {path.name}; available: {', '.join(available)}")
    data = yaml.safe_load(path.read_text()) or {}
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigMergeError(f"{path.name}: 'config' is not a mapping")
    return {full_key(str(key)): value for key, value in config.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the CLI; the value is read as YAML (so `true`, `3` and `[a, b]` keep their type)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigMergeError(f"override {text!r} is not key=value")
    return full_key(key.strip()), yaml.safe_load(raw) if raw.strip() else ""


def merge_config(
    name: str,
    base: str,
    base_config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    secrets: Mapping[str, str],
    *,
    today: dt.date,
    ttl_days: int,
) -> StackPlan:
    """Base config, then overrides, then the forced test settings (`environment: test`, `expiresOn`).

    Encrypted (`secure:`) values in the base file belong to the base stack's secrets provider and
    cannot be copied; they are dropped and listed, and secrets arrive through `secrets` instead.
    """
    require_test_stack_name(name)
    if not 1 <= ttl_days <= MAX_TTL_DAYS:
        raise ConfigMergeError(f"ttl of {ttl_days} days: use 1 to {MAX_TTL_DAYS}")
    forced = {full_key("environment"), full_key("expiresOn")}
    config: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in base_config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            dropped.append(key)
            continue
        config[key] = value
    for raw_key, value in overrides.items():
        key = full_key(raw_key)
        if key in forced:
            raise ConfigMergeError(f"{key} is set by the test stack itself and cannot be overridden")
        if key in {full_key(k) for k in secrets}:
            raise ConfigMergeError(f"{key} is a secret: pass it through an environment variable, not an override")
        config[key] = value
    expires_on = today + dt.timedelta(days=ttl_days)
    config[full_key("environment")] = TEST_ENVIRONMENT
    config[full_key("expiresOn")] = expires_on.isoformat()
    secret_values = {full_key(k): SecretValue(v) for k, v in secrets.items()}
    for key in secret_values:
        config.pop(key, None)
    target = str(config.get(full_key("target"), ""))
    if target in AZURE_TARGETS and len(short_name(name)) > MAX_AZURE_STACK_NAME:
        raise NamingError(
            f"stack name {name!r} is longer than {MAX_AZURE_STACK_NAME} characters: the Key Vault name "
            f"(slm-<stack>-kv plus an 8-character suffix) would exceed Azure's 24"
        )
    tags = {EXPIRES_TAG: expires_on.isoformat(), ENVIRONMENT_TAG: TEST_ENVIRONMENT, "base-stack": base}
    return StackPlan(
        name=name,
        base=base,
        config=config,
        secrets=secret_values,
        expires_on=expires_on,
        tags=tags,
        dropped_secrets=tuple(d for d in dropped if d not in secret_values),
    )


# The backend protocol ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StackInfo:
    name: str
    update_in_progress: bool = False


@dataclass(frozen=True)
class StackMeta:
    """What sweep reads about a stack: its tags, and config from its last update as a fallback."""

    tags: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, str] = field(default_factory=dict)

    def value(self, tag: str, config_key: str) -> str | None:
        if self.tags.get(tag):
            return self.tags[tag]
        return self.config.get(full_key(config_key))


class StackHandle(Protocol):
    name: str

    def configure(self, config: Mapping[str, Any], secrets: Mapping[str, SecretValue]) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def up(self) -> None: ...

    def outputs(self) -> dict[str, Any]: ...

    def destroy(self) -> None: ...


class Backend(Protocol):
    def create_or_select(self, name: str) -> StackHandle: ...

    def select(self, name: str) -> StackHandle: ...

    def remove_stack(self, name: str) -> None: ...

    def list_stacks(self) -> list[StackInfo]: ...

    def metadata(self, name: str) -> StackMeta: ...


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# Lifecycle ---------------------------------------------------------------------------------------


class SmokeOutcome(Protocol):
    @property
    def ok(self) -> bool: ...

    def summary(self) -> str: ...


SmokeTest = Callable[[Mapping[str, Any]], SmokeOutcome]
# Waits until the stack's endpoints serve (delivery.readiness); same shape as the smoke test.
ReadinessCheck = Callable[[Mapping[str, Any]], SmokeOutcome]
Stage = Literal["configure", "up", "ready", "smoke"]


@dataclass
class LifecycleResult:
    name: str
    ok: bool
    failed_stage: Stage | None = None
    error: str | None = None
    smoke: SmokeOutcome | None = None
    readiness: SmokeOutcome | None = None
    destroyed: bool = False
    kept: bool = False
    steps: list[str] = field(default_factory=list)


def teardown(backend: Backend, name: str, log: Log = _quiet, steps: list[str] | None = None) -> None:
    """Destroy the stack's resources, then remove the stack. A failed destroy keeps the stack: removing
    it would forget resources that still exist (and cost money)."""
    require_test_stack_name(name)
    trail = steps if steps is not None else []
    stack = backend.select(name)
    log(f"destroying {name}")
    trail.append("destroy")
    try:
        stack.destroy()
    except Exception as error:
        raise TeardownError(f"destroy of {name} failed, stack kept for a retry: {_one_line(error)}") from error
    log(f"removing stack {name}")
    trail.append("remove")
    backend.remove_stack(name)


def run_lifecycle(
    backend: Backend,
    plan: StackPlan,
    smoke: SmokeTest,
    *,
    ready: ReadinessCheck | None = None,
    keep_on_failure: bool = False,
    destroy_after: bool = False,
    log: Log = _quiet,
) -> LifecycleResult:
    """create/select -> configure -> up -> ready -> smoke; on failure destroy + remove (unless keep_on_failure);
    on success destroy + remove only when destroy_after (a pull request's stack lives until it closes)."""
    require_test_stack_name(plan.name)
    result = LifecycleResult(plan.name, ok=False)
    stage: Stage = "configure"
    try:
        stack = backend.create_or_select(plan.name)
        result.steps.append("select")
        stack.configure(plan.config, plan.secrets)
        stack.set_tags(plan.tags)
        result.steps.append("configure")
        stage = "up"
        log(f"pulumi up {plan.name} (base {plan.base}, expires {plan.expires_on.isoformat()})")
        result.steps.append("up")
        stack.up()
        outputs = stack.outputs()
        if ready is not None:
            # `up` returns before the backends serve (image pulls, model download and conversion).
            stage = "ready"
            result.steps.append("ready")
            readiness = ready(outputs)
            result.readiness = readiness
            if not readiness.ok:
                raise NotReadyError(readiness.summary())
        stage = "smoke"
        result.steps.append("smoke")
        outcome = smoke(outputs)
        result.smoke = outcome
        if not outcome.ok:
            raise SmokeFailedError(outcome.summary())
    except Exception as error:
        result.failed_stage = stage
        result.error = _one_line(error)
        log(f"{stage} failed for {plan.name}: {result.error}")
        if keep_on_failure:
            result.kept = True
            log(f"keeping {plan.name} for inspection (--keep-on-failure); it expires {plan.expires_on.isoformat()}")
        else:
            teardown(backend, plan.name, log, result.steps)
            result.destroyed = True
        return result
    result.ok = True
    if destroy_after:
        teardown(backend, plan.name, log, result.steps)
        result.destroyed = True
    return result


class SmokeFailedError(DeliveryError):
    pass


class NotReadyError(DeliveryError):
    pass


# Sweep -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepDecision:
    name: str
    action: Literal["destroy", "keep", "refuse", "skip"]
    reason: str


def parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip().strip('"'))
    except ValueError:
        return None


def decide(info: StackInfo, meta: StackMeta | None, today: dt.date) -> SweepDecision:
    """Whether sweep may destroy this stack: a test stack by name AND by environment, past its expiry."""
    name = info.name
    short = short_name(name)
    if short in PROTECTED_STACKS:
        return SweepDecision(name, "refuse", "protected stack name")
    if not is_test_stack_name(name):
        return SweepDecision(name, "skip", "not a test stack name")
    if meta is None:
        return SweepDecision(name, "skip", "could not read its tags or config")
    environment = meta.value(ENVIRONMENT_TAG, "environment")
    if environment != TEST_ENVIRONMENT:
        return SweepDecision(name, "refuse", f"environment is {environment!r}, not 'test'")
    raw = meta.value(EXPIRES_TAG, "expiresOn")
    expires_on = parse_date(raw)
    if expires_on is None:
        return SweepDecision(name, "skip", f"no readable expiry ({raw!r})")
    if info.update_in_progress:
        return SweepDecision(name, "skip", "an update is in progress")
    if today > expires_on:
        return SweepDecision(name, "destroy", f"expired on {expires_on.isoformat()}")
    return SweepDecision(name, "keep", f"expires on {expires_on.isoformat()}")


@dataclass
class SweepResult:
    decisions: list[SweepDecision]
    destroyed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def sweep(backend: Backend, today: dt.date, *, dry_run: bool = False, log: Log = _quiet) -> SweepResult:
    """Destroy and remove every expired test stack; other stacks are only read, never changed."""
    decisions: list[SweepDecision] = []
    for info in backend.list_stacks():
        meta: StackMeta | None = None
        if is_test_stack_name(info.name) and short_name(info.name) not in PROTECTED_STACKS:
            try:
                meta = backend.metadata(info.name)
            except Exception as error:
                log(f"{info.name}: cannot read metadata: {_one_line(error)}")
        decisions.append(decide(info, meta, today))
    result = SweepResult(decisions)
    for decision in decisions:
        log(f"{decision.name}: {decision.action} ({decision.reason})")
        if decision.action != "destroy" or dry_run:
            continue
        try:
            teardown(backend, decision.name, log)
            result.destroyed.append(decision.name)
        except Exception as error:
            result.failed[decision.name] = _one_line(error)
    return result


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:400] + "...") if len(text) > 400 else text or type(error).__name__

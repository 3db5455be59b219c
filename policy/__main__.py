"""The policy pack: `pulumi preview --policy-pack policy`. Every rule lives in validators.py as a plain
function; this file only adapts them to the policy SDK (tests/test_policy.py runs the pack as the CLI
does, through policy/engine.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyPack,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import _DictProxy, _is_unknown, _ListProxy  # pyright: ignore[reportPrivateUsage]
from validators import RESOURCE_VALIDATORS, STACK_VALIDATORS, UNKNOWN, Resource

CHART_TYPE = "kubernetes:helm.sh/v4:Chart"


def plain(value: Any) -> Any:
    """The SDK's props as plain dicts and lists, its unknown sentinels as UNKNOWN. Reading an unknown
    through the SDK's proxy raises, which would skip the whole policy for the resource in a preview;
    this way each rule decides what an unknown means (not judged until `up`)."""
    if isinstance(value, (_DictProxy, _ListProxy)):
        value = value["__target"]  # the proxy's own data, read without the unknown check
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return UNKNOWN if _is_unknown(value) else value


def _chart_of(parent: str | None) -> str:
    """The chart resource's name when the parent (a URN) is a helm.v4.Chart."""
    if not parent:
        return ""
    qualified, _, name = parent.rpartition("::")
    return name if qualified.rsplit("$", 1)[-1].endswith(CHART_TYPE) else ""


def _resource(resource_type: str, name: str, props: Any, protect: bool | None, parent: str | None) -> Resource:
    return Resource(
        type=resource_type,
        name=name,
        props=plain(props) if props is not None else {},
        protect=bool(protect),
        chart=_chart_of(parent),
    )


def _resource_policy(name: str, description: str, check: Any) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        resource = _resource(args.resource_type, args.name, args.props, args.opts.protect, args.opts.parent)
        for violation in check(resource):
            report(violation, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


def _stack_policy(name: str, description: str, check: Any) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        resources = [_resource(r.resource_type, r.name, r.props, r.opts.protect, r.opts.parent) for r in args.resources]
        for violation in check(resources):
            report(violation, None)

    return StackValidationPolicy(name=name, description=description, validate=validate)


PolicyPack(
    name="slm-serving",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[
        *(_resource_policy(name, description, check) for name, (description, check) in RESOURCE_VALIDATORS.items()),
        *(_stack_policy(name, description, check) for name, (description, check) in STACK_VALIDATORS.items()),
    ],
)

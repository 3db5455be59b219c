"""The policy pack: `pulumi preview --policy-pack policy`. Every rule lives in validators.py as a plain
function (tested in tests/test_policy.py); this file only adapts them to the policy SDK."""

from __future__ import annotations

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
from validators import RESOURCE_VALIDATORS, STACK_VALIDATORS, Resource


def _resource(resource_type: str, name: str, props: Any, protect: bool | None) -> Resource:
    return Resource(type=resource_type, name=name, props=props or {}, protect=bool(protect))


def _resource_policy(name: str, description: str, check: Any) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        resource = _resource(args.resource_type, args.name, args.props, args.opts.protect)
        for violation in check(resource):
            report(violation, None)

    return ResourceValidationPolicy(name=name, description=description, validate=validate)


def _stack_policy(name: str, description: str, check: Any) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        resources = [_resource(r.resource_type, r.name, r.props, r.opts.protect) for r in args.resources]
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

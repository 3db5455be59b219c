"""Offline render of a stack: `python -m offline.render --stack prod --out out/prod [--preview]`.

Runs the program for Pulumi.<stack>.yaml under the recording mock (no CLI, no credentials) and writes
every Kubernetes object as YAML, every Azure resource as JSON (type, name, inputs, parent, options),
an ARM template of the Azure resources for scanners, and a summary. Secrets are redacted; required
secrets the stack file does not hold are filled with placeholders and listed in the summary.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.config import NAMESPACE, SECRET_KEYS, ConfigError, required_secrets
from offline import recording
from offline.arm import to_arm_template
from policy import engine

PLACEHOLDER = "placeholder-not-a-real-secret"


@dataclass
class StackFile:
    config: dict[str, str]
    secret_keys: list[str]
    placeholders: list[str] = field(default_factory=list)


def _as_config_string(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_stack_config(stack: str, root: Path = recording.PROJECT_ROOT) -> StackFile:
    """Config the CLI would hand the program: Pulumi.yaml defaults overlaid by Pulumi.<stack>.yaml."""
    project = yaml.safe_load((root / "Pulumi.yaml").read_text())
    stack_path = root / f"Pulumi.{stack}.yaml"
    if not stack_path.exists():
        available = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in root.glob("Pulumi.*.yaml"))
        raise FileNotFoundError(f"no stack file {stack_path.name}; stacks: {', '.join(available)}")
    values = (yaml.safe_load(stack_path.read_text()) or {}).get("config") or {}

    config: dict[str, str] = {}
    for key, spec in (project.get("config") or {}).items():
        if isinstance(spec, dict) and "default" in spec:
            config[f"{NAMESPACE}:{key}"] = _as_config_string(spec["default"])
    secret_keys: list[str] = []
    encrypted: list[str] = []
    for key, value in values.items():
        full = key if ":" in key else f"{NAMESPACE}:{key}"
        if isinstance(value, dict) and set(value) == {"secure"}:
            encrypted.append(full)  # ciphertext needs the stack's secrets provider: use a placeholder
            continue
        config[full] = _as_config_string(value)

    stack_file = StackFile(config, secret_keys)
    target = json.loads(json.dumps(config.get(f"{NAMESPACE}:target", "")))
    needed = {f"{NAMESPACE}:{k}" for k in required_secrets(target)} | set(encrypted)
    for full in sorted(needed):
        if full not in config:
            config[full] = PLACEHOLDER
            stack_file.placeholders.append(full)
    stack_file.secret_keys = [k for k in config if k.split(":", 1)[1] in SECRET_KEYS or k in encrypted]
    return stack_file


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def write_render(rec: recording.Recording, stack_file: StackFile, out: Path, seconds: float) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    for sub in ("kubernetes", "azure", "pulumi", "arm"):
        (out / sub).mkdir(parents=True)

    azure: list[tuple[str, str, dict[str, Any]]] = []
    for index, reg in enumerate(rec.resources):
        stem = f"{index:03d}-{_slug(reg.name)}"
        if reg.type.startswith("kubernetes:") and reg.custom and not reg.type.startswith("kubernetes:helm"):
            manifest = yaml.safe_dump(recording.redact(reg.inputs), sort_keys=False)
            (out / "kubernetes" / f"{stem}.yaml").write_text(manifest)
            continue
        record = {
            "type": reg.type,
            "name": reg.name,
            "urn": reg.urn,
            "parent": reg.parent,
            "custom": reg.custom,
            "options": {
                "protect": reg.protect,
                "deleteBeforeReplace": reg.delete_before_replace,
                "replaceOnChanges": reg.replace_on_changes,
                "ignoreChanges": reg.ignore_changes,
                "additionalSecretOutputs": reg.additional_secret_outputs,
                "provider": reg.provider,
            },
            "inputs": recording.redact(reg.inputs),
        }
        folder = "azure" if reg.type.startswith("azure-native:") else "pulumi"
        (out / folder / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        if folder == "azure":
            azure.append((reg.type, reg.name, reg.inputs))

    # The scanners' view keeps no secret either.
    template = to_arm_template((t, n, recording.redact(i)) for t, n, i in azure)
    (out / "arm" / "template.json").write_text(json.dumps(template, indent=2) + "\n")

    summary = {
        "stack": rec.stack,
        "preview": rec.preview,
        "resources": len(rec.resources),
        "counts": rec.counts(),
        "placeholderSecrets": stack_file.placeholders,
        "exports": recording.redact(rec.exports),
        "seconds": round(seconds, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    policy = policy_results(rec)
    (out / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    (out / "preview.md").write_text(preview_markdown(rec, summary, policy))
    return summary


NOT_CHECKED = "(not checked)"


def policy_results(rec: recording.Recording) -> dict[str, list[str]]:
    """The policy pack's verdict on this render, policy -> violations, from the pack itself run as
    the CLI runs it (policy/engine.py: the policy SDK's own deserialization and analyzer). Without
    the pack's environment the render says so under NOT_CHECKED instead of claiming a pass."""
    if not engine.available():
        return {
            NOT_CHECKED: [
                f"the policy pack was not run: {engine.policy_python()} does not exist "
                "(python3 scripts/test.py creates .venv-policy from policy/requirements.txt)"
            ]
        }
    verdict = engine.check_recording(rec)
    # Advisories: what the SDK could not judge (none expected; the pack reads unknowns itself).
    return {**verdict.violations, **({"advisory": verdict.advisories} if verdict.advisories else {})}


def preview_markdown(rec: recording.Recording, summary: dict[str, Any], policy: dict[str, list[str]]) -> str:
    """Roughly what `pulumi preview` posts on a pull request for a new stack: what would be created,
    the outputs, and the policy pack's result."""
    lines = [f"## Preview of `{rec.stack}` (offline render)", ""]
    lines += ["| create | type |", "|---:|---|"]
    lines += [f"| {count} | `{type_}` |" for type_, count in summary["counts"].items()]
    lines += ["", f"**{summary['resources']} resources to create.**", "", "### Outputs", ""]
    for key, value in sorted(summary["exports"].items()):
        lines.append(f"- `{key}`: `{json.dumps(value)[:160]}`")
    failed = {name: found for name, found in policy.items() if found}
    lines += ["", "### Policy pack (mandatory)", ""]
    if NOT_CHECKED in policy:
        lines.append(f"Not checked: {policy[NOT_CHECKED][0]}.")
    elif not failed:
        lines.append(f"All {len(policy)} policies pass (the pack run through the policy SDK).")
    for name, found in failed.items():
        if name != NOT_CHECKED:
            lines += [f"- **{name}**: {len(found)} violation(s)", *(f"  - {v}" for v in found)]
    return "\n".join(lines) + "\n"


def render(stack: str, out: Path, preview: bool = False) -> dict[str, Any]:
    stack_file = read_stack_config(stack)
    started = time.perf_counter()
    rec = recording.run(stack, stack_file.config, stack_file.secret_keys, preview=preview)
    if rec.duplicates:
        raise RuntimeError(f"duplicate resource URNs: {rec.duplicates}")
    return write_render(rec, stack_file, out, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.render", description="Offline render of a stack")
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced)")
    parser.add_argument("--preview", action="store_true", help="render as `pulumi preview` sees a new stack")
    args = parser.parse_args(argv)
    try:
        summary = render(args.stack, args.out, preview=args.preview)
    except (ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"rendered stack {summary['stack']} to {args.out} in {summary['seconds']}s: {summary['resources']} resources")
    for type_, count in summary["counts"].items():
        print(f"  {count:3d}  {type_}")
    violations = json.loads((args.out / "policy.json").read_text())
    failed = sum(len(v) for v in violations.values())
    if NOT_CHECKED in violations:
        print(f"policy pack: NOT CHECKED, {violations[NOT_CHECKED][0]}")
    else:
        print(f"policy pack: {'all policies pass' if not failed else f'{failed} violation(s), see policy.json'}")
    if summary["placeholderSecrets"]:
        print(f"placeholder secrets (not in the stack file): {', '.join(summary['placeholderSecrets'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

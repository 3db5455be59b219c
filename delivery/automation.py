"""The Pulumi Automation API behind `delivery.ephemeral.Backend`: a LocalWorkspace on the project root.

Thin on purpose: every decision lives in `delivery.ephemeral`; this only translates calls.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from delivery.ephemeral import PROJECT_ROOT, SecretValue, StackInfo, StackMeta


def _stream(line: str) -> None:
    # The engine masks secret values in its own output; progress goes to stderr, results to stdout.
    print(line, file=sys.stderr, end="" if line.endswith("\n") else "\n", flush=True)


class AutomationStack:
    def __init__(self, stack: auto.Stack, policy_packs: Sequence[str]) -> None:
        self._stack = stack
        self._policy_packs = list(policy_packs)
        self.name = stack.name

    def configure(self, config: Mapping[str, Any], secrets: Mapping[str, SecretValue]) -> None:
        """Write the plain config as the stack file (structured values keep their YAML types, which
        `config set` would flatten to strings), then set each secret through the secrets provider."""
        workspace = self._stack.workspace
        try:
            current = workspace.stack_settings(self.name)
        except FileNotFoundError:
            current = auto.StackSettings()
        workspace.save_stack_settings(
            self.name,
            auto.StackSettings(
                secrets_provider=current.secrets_provider,
                encrypted_key=current.encrypted_key,
                encryption_salt=current.encryption_salt,
                config=dict(config),
            ),
        )
        for key, secret in secrets.items():
            self._stack.set_config(key, auto.ConfigValue(secret.value, secret=True))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._stack.set_tag(key, value)

    def up(self) -> None:
        self._stack.up(on_output=_stream, color="never", policy_packs=self._policy_packs or None)

    def outputs(self) -> dict[str, Any]:
        return {key: output.value for key, output in self._stack.outputs().items()}

    def destroy(self) -> None:
        self._stack.destroy(on_output=_stream, color="never")


class AutomationBackend:
    """Stacks of this project in the backend the environment selects (PULUMI_ACCESS_TOKEN or
    PULUMI_BACKEND_URL)."""

    def __init__(self, root: Path = PROJECT_ROOT, policy_packs: Sequence[str] = ()) -> None:
        self._root = str(root)
        self._policy_packs = tuple(policy_packs)
        self._workspace = auto.LocalWorkspace(work_dir=self._root)

    def create_or_select(self, name: str) -> AutomationStack:
        stack = auto.create_or_select_stack(stack_name=name, work_dir=self._root)
        return AutomationStack(stack, self._policy_packs)

    def select(self, name: str) -> AutomationStack:
        return AutomationStack(auto.select_stack(stack_name=name, work_dir=self._root), self._policy_packs)

    def remove_stack(self, name: str) -> None:
        self._workspace.remove_stack(name)

    def list_stacks(self) -> list[StackInfo]:
        return [StackInfo(s.name, bool(s.update_in_progress)) for s in self._workspace.list_stacks()]

    def metadata(self, name: str) -> StackMeta:
        tags: dict[str, str] = {}
        try:
            tags = {str(k): str(v) for k, v in self._workspace.list_tags(name).items()}
        except auto.CommandError:
            tags = {}  # backends without stack tags: fall back to the config of the last update
        config: dict[str, str] = {}
        if "expires-on" not in tags or "environment" not in tags:
            self._workspace.refresh_config(name)
            config = {
                key: str(value.value) for key, value in self._workspace.get_all_config(name).items() if not value.secret
            }
        return StackMeta(tags=tags, config=config)

"""The README is the user's manual: every configuration key is documented, and the sections a new
user needs exist."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from infra.config import SECRET_KEYS, StackSettings
from offline.recording import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        keys.append(key)
        annotation: Any = field.annotation
        nested = [a for a in (annotation, *getattr(annotation, "__args__", ())) if isinstance(a, type)]
        for candidate in nested:
            if issubclass(candidate, BaseModel) and not prefix:
                keys += _keys(candidate, f"{key}.")
    return keys


def test_every_configuration_key_is_documented() -> None:
    table = README[README.index("## Configuration") : README.index("## Model conversion")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    missing = []
    for key in [*_keys(StackSettings), *SECRET_KEYS]:
        section, _, leaf = key.partition(".")
        # A key's own row, or a row for its section that names it (`network.serviceCidr`, `podCidr`).
        first_cells = [row.split("|")[1] for row in rows]
        named = any(
            cell.strip().startswith(f"`{section}") and (not leaf or f"`{leaf}" in cell or f".{leaf}" in cell)
            for cell in first_cells
        )
        if not named:
            missing.append(key)
    assert not missing, f"undocumented configuration keys: {missing}"


def test_the_sections_a_new_user_needs_exist() -> None:
    for heading in (
        "## Architecture",
        "## Costs",
        "## Stacks",
        "## Calling the endpoints",
        "## Configuration",
        "## Pull requests and deploys",
        "## Ephemeral test stacks",
        "## Runbook",
        "## Tests",
    ):
        assert heading in README, heading
    assert README.startswith("# slm-serving\n\n```sh\n")
    assert "python3 scripts/test.py" in README.split("```")[1]
    assert "```mermaid" in README

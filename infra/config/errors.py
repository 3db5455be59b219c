"""Problems with their key paths, the error that lists them, and pydantic's errors as problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from infra.config.base import NAMESPACE

Loc = tuple[int | str, ...]


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(pulumi.RunError):
    """Raised before any resource exists; the message lists every problem."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)):\n{lines}")


def key_path(loc: Loc) -> str:
    """`("aks", "gpuPools", 0, "vmSize")` -> `slm-serving:aks.gpuPools[0].vmSize`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return f"{NAMESPACE}:{path}"


def _loc(item: ErrorDetails) -> Loc:
    """Where the error sits in the input, without pydantic's validator steps."""
    return tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))


def failed_keys(error: ValidationError) -> set[str]:
    """The top-level keys that hold at least one of the errors."""
    return {str(loc[0]) for loc in map(_loc, error.errors(include_url=False)) if loc}


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str] | None:
    """The valid keys of the model found at `loc` under `root` (for "unknown key" errors)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return [f.alias or n for n, f in model.model_fields.items()]


def problems_from(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """One problem per pydantic error of validating `root`, keyed by its path in the stack file."""
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = _loc(item)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            valid = _fields_at(root, loc[:-1])
            message = f"unknown key {loc[-1]!r}; valid keys: {', '.join(valid or [])}"
        elif item["type"] == "missing":
            message = "required key is not set"
        elif item["type"] not in ("value_error", "assertion_error"):
            message = f"{message} (got {item.get('input')!r})"
        problems.append(Problem(key_path(loc), message))
    return problems

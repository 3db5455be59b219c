"""Pydantic's validation errors as one OpenAI error: the request field at fault (as the client
wrote it, without pydantic's union-member tags such as `str` or `list[str]`) and what is valid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _param(loc: Sequence[Any], body: Any, kind: str) -> str:
    """Follow the error's location through the request itself: an element that indexes into it is
    part of the field's path; one that does not is a union member's name."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    path: list[str] = []
    current = body
    for position, element in enumerate(parts):
        if isinstance(current, dict) and isinstance(element, str) and element in current:
            current = current[element]
            path.append(element)
        elif isinstance(current, list) and isinstance(element, int) and 0 <= element < len(current):
            current = current[element]
            path.append(str(element))
        elif position == len(parts) - 1 and kind in ("missing", "extra_forbidden"):
            path.append(str(element))
    return ".".join(path)


def describe(errors: list[dict[str, Any]], body: Any) -> tuple[str, str | None, str]:
    """(message, param, code) for a failed request."""
    if not errors:
        return "invalid request", None, "invalid_value"
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON", None, "invalid_json"
    param = _param(first.get("loc", ()), body, str(first.get("type")))
    if first.get("type") == "extra_forbidden":
        return f"unknown parameter {param!r}", param or None, "unknown_parameter"
    # A union reports one error per member ("a valid string", "a valid list"): say them together.
    messages: list[str] = []
    for error in errors:
        if _param(error.get("loc", ()), body, str(error.get("type"))) == param:
            message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            if message not in messages:
                messages.append(message)
    joined = "; or ".join(messages)
    return (f"{param}: {joined}" if param else joined), param or None, "invalid_value"

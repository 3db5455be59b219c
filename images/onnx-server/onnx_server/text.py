"""Strings the model's tokenizer cannot take faithfully, found before anything reaches it.

A lone UTF-16 surrogate (JSON `"\\ud800"`) is not Unicode: the tokenizer binding raises and its
message repeats the whole prompt. A NUL cuts the prompt short inside the C++ tokenizer, silently.
Both are refused with the path of the field that holds them, never with the text itself.
"""

from __future__ import annotations

from typing import Any


def problem(text: str) -> str | None:
    """Why `text` cannot be tokenised as sent, or None."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"contains a NUL character (U+0000) at character {nul}, which the model's tokenizer cannot take"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        return (
            f"contains a lone UTF-16 surrogate (U+{code:04X}) at character {error.start}, which is not valid "
            "Unicode; send well-formed UTF-8 text"
        )
    return None


def first_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """(JSON path, why) of the first string in a decoded request that cannot be tokenised."""
    if isinstance(value, str):
        why = problem(value)
        return (path or "body", why) if why else None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and (found := problem(key)):
            return (f"{path}.{key!r}" if path else repr(key), found)
        found = first_problem(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None

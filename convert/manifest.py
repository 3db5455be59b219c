"""conversion.json: what was converted, how, by which tools, into which files (with sha256)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "conversion.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> list[dict[str, Any]]:
    return [
        {"name": str(p.relative_to(folder)), "sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def read(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def intact(folder: Path, data: dict[str, Any], check_hashes: bool = False) -> bool:
    """Every listed file is there with its size (and hash, when asked)."""
    for entry in data.get("files", []):
        path = folder / entry["name"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        if check_hashes and sha256(path) != entry["sha256"]:
            return False
    return bool(data.get("files"))


def write(folder: Path, data: dict[str, Any]) -> dict[str, Any]:
    full = {**data, "files": file_entries(folder)}
    (folder / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
    return full

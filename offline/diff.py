"""Compare two offline renders as sets of resources: `python -m offline.diff OLD NEW`.

OLD and NEW are render folders (what `python -m offline.render` writes), or folders of render folders
(what `scripts/render-all` writes, one per stack and mode), compared pair by pair by folder name.

A resource is identified by its type and name, never by the file the render numbered it into, and
compared by everything the render wrote for it: a Kubernetes object's manifest; the URN, parent,
options and inputs of every other resource; its ARM view. Also compared: the stack's exports and
placeholder secrets (summary.json; its counts and timing are left out) and the policy pack's verdict.
preview.md only shows those again. Exit 0 when identical, 1 when different, 2 when a folder is not
a render. Renders of two checkouts differ in their image build paths: `--roots OLD_ROOT NEW_ROOT`
reads OLD_ROOT in OLD as NEW_ROOT.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import difflib
import gzip
import json
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import yaml

_NUMBERED = re.compile(r"^\d+-")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_LONGEST_VALUE = 240


class NotARender(Exception):
    pass


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


def is_render(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def _add(entries: dict[str, Any], key: str, value: Any) -> None:
    # (type, name) is unique in practice (same type and name under two parents is legal): keep both.
    unique, count = key, 1
    while unique in entries:
        count += 1
        unique = f"{key} #{count}"
    entries[unique] = value


def _kubernetes_type(manifest: dict[str, Any]) -> str:
    """The Pulumi type token of a manifest (`v1` is the core group: kubernetes:core/v1:Namespace)."""
    api_version = str(manifest.get("apiVersion", "?"))
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{manifest.get('kind', '?')}"


def read_render(folder: Path) -> dict[str, Any]:
    """Everything a render says, keyed by what it is: `<type> <name>` for a resource."""
    if not is_render(folder):
        raise NotARender(f"{folder} is not a render folder (no summary.json)")
    entries: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        area = relative.split("/", 1)[0]
        if area == "kubernetes" and path.suffix == ".yaml":
            manifest = yaml.safe_load(path.read_text())
            # The file name is the index and the Pulumi name: only the name identifies the object.
            _add(entries, f"{_kubernetes_type(manifest)} {_NUMBERED.sub('', path.stem)}", manifest)
        elif area in ("azure", "pulumi") and path.suffix == ".json":
            record = json.loads(path.read_text())
            _add(entries, f"{record.pop('type')} {record.pop('name')}", record)
        elif relative == "arm/template.json":
            template = json.loads(path.read_text())
            for resource in template.pop("resources", []):
                _add(entries, f"arm {resource.get('type')} {resource.get('name')}", resource)
            entries["arm template"] = template
        elif relative == "summary.json":
            summary = json.loads(path.read_text())
            entries["exports"] = summary.get("exports", {})
            entries["placeholder secrets"] = sorted(summary.get("placeholderSecrets", []))
        elif relative == "policy.json":
            # Violations come in registration order, which is not a difference.
            entries["policy pack"] = {name: sorted(found) for name, found in json.loads(path.read_text()).items()}
        elif relative != "preview.md":
            # Whatever a later render adds is compared too, by its name without the index.
            entries[f"file {path.parent.relative_to(folder) / _NUMBERED.sub('', path.name)}"] = path.read_text()
    return entries


def _join(path: str, key: object) -> str:
    text = str(key)
    if _PLAIN_KEY.fullmatch(text):
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text)}]"


def _cut(text: str) -> str:
    return text if len(text) <= _LONGEST_VALUE else text[: _LONGEST_VALUE - 1] + "…"


def _show(value: Any) -> str:
    return _cut(repr(value) if value is ABSENT else json.dumps(value, ensure_ascii=False, default=str))


def _by_name(items: list[Any]) -> dict[str, Any] | None:
    """Items keyed by their `name` (containers, env, volumes, ports), if every one has a distinct one."""
    named = {item["name"]: item for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)}
    return named if len(named) == len(items) else None


def _unpacked(text: str) -> str | None:
    """gzip+base64 text (the VM's cloud-init customData) as its text."""
    if text.startswith("H4sI"):
        with contextlib.suppress(ValueError, OSError, EOFError, zlib.error):
            return gzip.decompress(base64.b64decode(text, validate=True)).decode()
    return None


def _structured(text: str) -> Any:
    """Multi-line YAML or JSON text (cloud-config, Compose files, rules, dashboards) as data, else None."""
    if "\n" in text.strip():
        with contextlib.suppress(yaml.YAMLError):
            data = yaml.safe_load(text)
            if isinstance(data, dict | list):
                return data
    return None


def _string_changes(old: str, new: str, where: str) -> list[str]:
    """Packed text unpacked, embedded YAML or JSON by key path, other multi-line text line by line."""
    old_text, new_text = _unpacked(old), _unpacked(new)
    if old_text is not None and new_text is not None and old_text != new_text:
        old, new, where = old_text, new_text, f"{where}<gzip+base64>"
    old_data, new_data = _structured(old), _structured(new)
    if old_data is not None and new_data is not None and old_data != new_data:
        return changes(old_data, new_data, f"{where}<yaml>")
    if "\n" not in old + new:
        return [] if old_text is None else [f"{where}: {_show(old)} -> {_show(new)}"]
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=1))[2:]
    return [f"{where}: text changed", *(f"  {_cut(line)}" for line in lines)]


def changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Key-path differences, one line each: `spec.replicas: 1 -> 2`."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(key for key in new if key not in old)]
        return [line for key in keys for line in changes(old.get(key, ABSENT), new.get(key, ABSENT), _join(path, key))]
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new):
            items = enumerate(zip(old, new, strict=True))
            return [line for i, (o, n) in items for line in changes(o, n, f"{path}[{i}]")]
        old_named, new_named = _by_name(old), _by_name(new)
        if old_named is not None and new_named is not None:
            names = [*old_named, *(name for name in new_named if name not in old_named)]
            return [
                line
                for name in names
                for line in changes(old_named.get(name, ABSENT), new_named.get(name, ABSENT), f"{path}[name={name}]")
            ]
        if any(isinstance(item, dict | list) for item in old + new):
            # Items by index; the longer list's extra items show as added or removed.
            size = max(len(old), len(new))
            padded = [(old[i] if i < len(old) else ABSENT, new[i] if i < len(new) else ABSENT) for i in range(size)]
            return [line for i, (o, n) in enumerate(padded) for line in changes(o, n, f"{path}[{i}]")]
    where = path or "(value)"
    if isinstance(old, str) and isinstance(new, str):
        found = _string_changes(old, new, where)
        if found:
            return found
    return [f"{where}: {_show(old)} -> {_show(new)}"]


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The report for one pair of renders; empty when they are the same."""
    lines = [f"only in OLD: {key}" for key in sorted(old.keys() - new.keys())]
    lines += [f"only in NEW: {key}" for key in sorted(new.keys() - old.keys())]
    for key in sorted(k for k in old.keys() & new.keys() if old[k] != new[k]):
        lines += [f"changed: {key}", *(f"  {line}" for line in changes(old[key], new[key]))]
    return lines


def rerooted(value: Any, old_root: str, new_root: str) -> Any:
    """The render of another checkout as if it were rendered here (image build contexts are paths)."""
    if isinstance(value, str):
        return value.replace(old_root, new_root)
    if isinstance(value, dict):
        return {key: rerooted(item, old_root, new_root) for key, item in value.items()}
    if isinstance(value, list):
        return [rerooted(item, old_root, new_root) for item in value]
    return value


def pairs(old: Path, new: Path) -> list[tuple[str, Path | None, Path | None]]:
    """(label, old render, new render): the two folders themselves, or their render subfolders by name."""
    if is_render(old) or is_render(new):
        return [(new.name if old.name == new.name else f"{old.name} vs {new.name}", old, new)]
    names = sorted({p.name for folder in (old, new) if folder.is_dir() for p in folder.iterdir() if is_render(p)})
    if not names:
        raise NotARender(f"neither {old} nor {new} is a render folder or holds one")
    return [(n, old / n if is_render(old / n) else None, new / n if is_render(new / n) else None) for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m offline.diff", description="Compare two offline renders")
    parser.add_argument("old", type=Path, help="render folder, or folder of render folders")
    parser.add_argument("new", type=Path, help="render folder, or folder of render folders")
    parser.add_argument(
        "--roots", nargs=2, metavar=("OLD_ROOT", "NEW_ROOT"), help="the checkouts they were rendered from, if not one"
    )
    args = parser.parse_args(argv)
    different = False
    try:
        for label, old, new in pairs(args.old, args.new):
            if old is None or new is None:
                print(f"{label}: only in {'NEW' if old is None else 'OLD'}")
                different = True
                continue
            before = read_render(old)
            report = compare(rerooted(before, *args.roots) if args.roots else before, read_render(new))
            print(f"{label}: {'identical' if not report else 'different'}")
            print("".join(f"  {line}\n" for line in report), end="")
            different = different or bool(report)
    except NotARender as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())

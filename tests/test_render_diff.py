"""`python -m offline.diff`: two offline renders compared as sets of resources, by type and name."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path
from shutil import copytree
from typing import Any

import pytest
import yaml

from offline import diff
from offline.recording import PROJECT_ROOT
from offline.render import render


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("renders")
    render("local", root / "first" / "local")
    render("local", root / "second" / "local")
    return root / "first" / "local", root / "second" / "local"


@pytest.fixture
def changed(renders: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the first render, to change."""
    return Path(copytree(renders[0], tmp_path / "local"))


def run_diff(old: Path, new: Path, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    code = diff.main([str(old), str(new), *options])
    return code, capsys.readouterr().out


def rewrite_json(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record, indent=2) + "\n")


def a_deployment_with_args(folder: Path) -> tuple[Path, dict[str, Any]]:
    for path in sorted((folder / "kubernetes").glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        if manifest["kind"] == "Deployment" and manifest["spec"]["template"]["spec"]["containers"][0].get("args"):
            return path, manifest
    raise AssertionError("the local render has no Deployment whose first container has args")


def name_of(path: Path) -> str:
    return path.stem.split("-", 1)[1]


def test_two_renders_of_a_stack_are_identical(renders: tuple[Path, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "offline.diff", *map(str, renders)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "local: identical\n"


def test_a_changed_input_is_reported_by_its_key_path(
    changed: Path, renders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path, manifest = a_deployment_with_args(changed)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    args = list(container["args"])
    container["args"] = [*args, "--verbose"]
    manifest["metadata"]["labels"]["extra"] = "yes"
    del container["image"]
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    component = sorted((changed / "pulumi").glob("*.json"))[0]
    rewrite_json(component, lambda r: r["options"].update(protect=True))
    summary = json.loads((changed / "summary.json").read_text())
    target = summary["exports"]["target"]
    summary["exports"]["target"] = "vm"
    summary["seconds"] = 99.0  # timing is no difference
    (changed / "summary.json").write_text(json.dumps(summary))

    code, out = run_diff(renders[0], changed, capsys)

    assert code == 1
    deployment = f"  changed: kubernetes:apps/v1:Deployment {name_of(path)}\n"
    assert deployment in out
    more = json.dumps([*args, "--verbose"])
    assert f"    spec.template.spec.containers[0].args: {json.dumps(args)} -> {more}\n" in out
    assert '    metadata.labels.extra: (absent) -> "yes"\n' in out
    assert '    spec.template.spec.containers[0].image: "' in out and '" -> (absent)\n' in out
    record = json.loads(component.read_text())
    assert f"  changed: {record['type']} {record['name']}\n    options.protect: false -> true\n" in out
    assert f'  changed: exports\n    target: {json.dumps(target)} -> "vm"\n' in out
    assert "seconds" not in out


def test_an_added_and_a_removed_resource_are_reported_by_type_and_name(
    changed: Path, renders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    removed = sorted((changed / "kubernetes").glob("*.yaml"))[0]
    gone = yaml.safe_load(removed.read_text())
    removed.unlink()
    source = sorted((changed / "pulumi").glob("*.json"))[0]
    record = json.loads(source.read_text())
    record["name"] = "slm-local-extra"
    (changed / "pulumi" / "999-slm-local-extra.json").write_text(json.dumps(record))

    code, out = run_diff(renders[0], changed, capsys)

    assert code == 1
    kind = f"kubernetes:{'core/' if '/' not in gone['apiVersion'] else ''}{gone['apiVersion']}:{gone['kind']}"
    assert out == (
        f"local: different\n  only in OLD: {kind} {name_of(removed)}\n  only in NEW: {record['type']} slm-local-extra\n"
    )


def test_renumbered_files_are_no_difference(
    changed: Path, renders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = sorted(p for area in ("kubernetes", "pulumi") for p in (changed / area).iterdir())
    for index, path in enumerate(reversed(files)):
        path.rename(path.with_name(f"{500 + index:04d}-{name_of(path)}{path.suffix}"))
    assert sorted(p.name for p in (changed / "kubernetes").iterdir()) != sorted(
        p.name for p in (renders[0] / "kubernetes").iterdir()
    )
    assert run_diff(renders[0], changed, capsys) == (0, "local: identical\n")


def test_folders_of_renders_are_compared_stack_by_stack(
    renders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = renders[0].parent, renders[1].parent
    assert run_diff(old, new, capsys) == (0, "local: identical\n")
    copytree(renders[0], tmp_path / "old" / "retired")
    copytree(renders[0], tmp_path / "old" / "local")
    assert run_diff(tmp_path / "old", new, capsys) == (1, "local: identical\nretired: only in OLD\n")
    assert run_diff(tmp_path / "old", tmp_path, capsys) == (1, "local: only in OLD\nretired: only in OLD\n")
    (tmp_path / "empty").mkdir()
    assert run_diff(tmp_path / "empty", tmp_path / "empty", capsys)[0] == 2


def test_renders_of_two_checkouts_compare_with_their_roots(
    changed: Path, renders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (changed / "pulumi").glob("*.json"):
        path.write_text(path.read_text().replace(str(PROJECT_ROOT), "/elsewhere"))
    code, out = run_diff(changed, renders[1], capsys)
    assert code == 1 and f'"/elsewhere" -> "{PROJECT_ROOT}"' in out
    roots = ("--roots", "/elsewhere", str(PROJECT_ROOT))
    assert run_diff(changed, renders[1], capsys, *roots) == (0, "local: identical\n")


def test_embedded_and_packed_text_is_compared_by_key_path_and_line() -> None:
    def packed(image: str) -> str:
        compose = f"services:\n  a:\n    image: {image}\n"
        cloud_config = "#cloud-config\n" + yaml.safe_dump({"write_files": [{"content": compose}]})
        return base64.b64encode(gzip.compress(cloud_config.encode(), mtime=0)).decode()

    old = {"customData": packed("x:1"), "script": "a\nb\n"}
    new = {"customData": packed("x:2"), "script": "a\nc\n"}
    assert diff.changes(old, new) == [
        'customData<gzip+base64><yaml>.write_files[0].content<yaml>.services.a.image: "x:1" -> "x:2"',
        "script: text changed",
        "  @@ -1,2 +1,2 @@",
        "   a",
        "  -b",
        "  +c",
    ]

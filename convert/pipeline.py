"""One conversion, end to end: resolve, check, convert in a scratch folder next to the destination,
verify, write conversion.json, and only then rename into place.

An interrupted or failed run never leaves a folder that looks complete: the destination appears in
one rename, after the model loaded and generated.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from convert import errors, interrupt, manifest, source
from convert.cpus import available_cpus
from convert.key import TOOLCHAIN, ConversionSpec
from convert.methods import METHODS
from convert.targets import TARGETS, Target

# Known prebuilt repositories: target -> sub-folder.
PREBUILT_LAYOUTS: dict[str, dict[str, str]] = {
    "microsoft/Phi-4-mini-instruct-onnx": {
        "cpu-int4": "cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4",
        "cuda-int4": "gpu/gpu-int4-rtn-block-32",
    },
}
# Headroom over the estimate: caches, tokenizer, the builder's intermediate files.
_DISK_MARGIN = 1.25
_MIN_FREE = 64 << 20


@dataclass(frozen=True)
class Request:
    out: Path
    model: str | None = None
    revision: str | None = None
    target: str = "cpu-int4"
    method: str = "olive"
    block_size: int = 32
    accuracy_level: int = 4
    force: bool = False
    prebuilt: str | None = None
    prebuilt_subfolder: str | None = None
    compare: bool = True
    threads: int | None = None


@dataclass(frozen=True)
class Result:
    status: str  # "converted" or "unchanged"
    key: str
    out: Path
    manifest: dict[str, Any]


Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _target(name: str) -> Target:
    if name not in TARGETS:
        raise errors.UsageError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}")
    return TARGETS[name]


def verification_device(target: Target) -> str:
    """Where the result is loaded and checked: its own device when this machine has it, else the CPU.

    The model builder builds a CUDA model on the CPU (the `-e cuda` choice sets the graph's fp16
    inputs and the provider in genai_config.json; weights are loaded and quantized by torch and
    onnxruntime on the CPU), and onnxruntime's CPU provider runs that graph too, so a converter
    without a GPU still proves the result loads and generates. The server then loads it on the GPU.
    """
    if target.device != "cuda":
        return "cpu"
    has_gpu = Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()
    if not has_gpu:
        return "cpu"
    import onnxruntime  # noqa: PLC0415

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def _validate(request: Request) -> None:
    if request.method not in (*METHODS, "prebuilt"):
        raise errors.UsageError(f"unknown method {request.method!r}; valid: {', '.join(METHODS)}")
    if request.prebuilt is None and request.model is None:
        raise errors.UsageError("--model is required (or --prebuilt)")
    if not 16 <= request.block_size <= 256 or request.block_size & (request.block_size - 1):
        raise errors.UsageError(f"--block-size {request.block_size}: use a power of two from 16 to 256")
    if request.accuracy_level not in (0, 1, 2, 3, 4):
        raise errors.UsageError(
            f"--accuracy-level {request.accuracy_level}: valid 0 (unset), 1 fp32, 2 fp16, 3 bf16, 4 int8"
        )


def _prebuilt_subfolder(repo: str, target: str, override: str | None) -> str:
    if override is not None:
        return override.strip("/")
    return PREBUILT_LAYOUTS.get(repo, {}).get(target, target)


def _versions() -> dict[str, str]:
    names = ("olive-ai", "onnxruntime-genai", "onnxruntime", "transformers", "torch", "onnx")
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _clean_stale_partials(out: Path, log: Log) -> None:
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        alive = pid.isdigit() and Path(f"/proc/{pid}").exists() and int(pid) != os.getpid()
        if not alive:
            log(f"removing the leftovers of an interrupted run: {stale}")
            shutil.rmtree(stale, ignore_errors=True)


def _check_disk(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < needed + _MIN_FREE:
        raise errors.NotEnoughDisk(
            f"not enough disk space at {out.parent}: need about {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        )


def _estimate(src: source.ModelSource | None, target: Target) -> int:
    if src is None:
        return 0  # a prebuilt repository's size is not known before it is listed
    source_bytes_per_param = 2.0  # bf16/fp16 checkpoints; fp32 ones make this an overestimate
    output = src.size_bytes / source_bytes_per_param * target.bytes_per_parameter
    download = 0 if src.local else src.size_bytes
    return int((output + download) * _DISK_MARGIN)


def _fetch_prebuilt(repo: str, revision: str | None, subfolder: str, into: Path) -> tuple[str, str]:
    """Copy a prebuilt model folder into `into`; returns (repo id, resolved revision)."""
    local = Path(repo)
    if local.exists():
        folder = local / subfolder if subfolder and (local / subfolder).is_dir() else local
        if not (folder / "genai_config.json").is_file():
            raise errors.ModelNotFound(f"{folder}: no genai_config.json (not an onnxruntime-genai model folder)")
        shutil.copytree(folder, into)
        return str(local), source.folder_hash(folder)
    hub_source = source.ModelSource(repo, revision or "main", False, 0, "prebuilt")
    downloaded = source.download(hub_source, into.parent / "prebuilt-download", allow=[f"{subfolder}/*"])
    folder = downloaded / subfolder
    if not (folder / "genai_config.json").is_file():
        raise errors.ModelNotFound(f"{repo}: no model in sub-folder {subfolder!r} (set --prebuilt-subfolder)")
    shutil.move(str(folder), into)
    return repo, revision or "main"


def convert(request: Request, log: Log = _stderr) -> Result:
    _validate(request)
    target = _target(request.target)
    out = request.out.resolve()
    method = "prebuilt" if request.prebuilt else request.method

    # With --prebuilt, --revision names the prebuilt repository's revision, not the source model's.
    model_revision = None if request.prebuilt else request.revision
    src = source.resolve(request.model, model_revision) if request.model else None
    subfolder = (
        _prebuilt_subfolder(request.prebuilt, request.target, request.prebuilt_subfolder) if request.prebuilt else ""
    )
    spec = ConversionSpec(
        source=src.id if src else "",
        revision=src.revision if src else "",
        target=target.name,
        method=method,
        block_size=request.block_size if target.quantized and method != "prebuilt" else 0,
        accuracy_level=request.accuracy_level if target.quantized and method != "prebuilt" else 0,
        prebuilt=f"{request.prebuilt}/{subfolder}" if request.prebuilt else "",
    )
    key = spec.key()

    existing = manifest.read(out) if out.exists() else None
    if existing is not None and existing.get("key") == key and manifest.intact(out, existing):
        log(f"{out} is up to date (conversion key {key}); nothing to do")
        return Result("unchanged", key, out, existing)
    if out.exists() and not request.force:
        held = f"conversion key {existing.get('key')}" if existing else "other content"
        raise errors.OutputConflict(f"{out} holds {held}, not {key}; pass --force to replace it")

    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(out, log)
    _check_disk(out, _estimate(src, target))
    threads = request.threads or available_cpus()
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    with interrupt.scratch_folder(work):
        model_dir = work / "model"
        # The source is needed to convert, or with --prebuilt only to compare against it.
        needed = src is not None and (not request.prebuilt or request.compare)
        source_dir = source.download(src, work / "source") if needed and src else None
        if request.prebuilt:
            log(f"fetching prebuilt {request.prebuilt} ({subfolder or 'top level'})")
            prebuilt_id, prebuilt_revision = _fetch_prebuilt(request.prebuilt, request.revision, subfolder, model_dir)
        else:
            assert source_dir is not None  # _validate: a model is required without --prebuilt
            log(f"converting {spec.source} to {target.name} with {method}")
            METHODS[method](
                source_dir,
                target,
                model_dir,
                work,
                block_size=request.block_size,
                accuracy_level=request.accuracy_level,
            )
            prebuilt_id = prebuilt_revision = ""
        device = verification_device(target)
        log(f"verifying on {device}: load, generate, compare with the source")
        checks = verify_model(model_dir, target, device, threads, source_dir if request.compare else None)
        data = {
            "key": key,
            "source": spec.source,
            "revision": spec.revision,
            "architecture": src.architecture if src else None,
            "prebuilt": {"repo": prebuilt_id, "subfolder": subfolder, "revision": prebuilt_revision}
            if request.prebuilt
            else None,
            "target": target.name,
            "precision": target.precision,
            "execution_provider": target.execution_provider,
            "method": method,
            "block_size": spec.block_size or _block_size_from_name(subfolder),
            "accuracy_level": spec.accuracy_level or None,
            "toolchain": TOOLCHAIN,
            "tool_versions": _versions(),
            "verification": checks,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        written = manifest.write(model_dir, data)
        if out.exists():
            out.replace(work / "replaced")
        model_dir.replace(out)
    log(f"wrote {out} (conversion key {key})")
    return Result("converted", key, out, written)


def _block_size_from_name(subfolder: str) -> int | None:
    match = re.search(r"block-(\d+)", subfolder)
    return int(match.group(1)) if match else None


def verify_model(model_dir: Path, target: Target, device: str, threads: int, source_dir: Path | None) -> dict[str, Any]:
    from convert.verify import verify  # noqa: PLC0415 (imports onnxruntime-genai and torch)

    return verify(model_dir, target, device, threads, source_dir)

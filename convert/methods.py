"""The two ways to build an onnxruntime-genai model: Olive's ModelBuilder pass (default) and the
onnxruntime-genai model builder called directly (`--method builder`). Both use RTN for int4, which
needs no calibration data: offline and reproducible."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from convert import errors, interrupt
from convert.targets import Target

# Olive's own bookkeeping, not part of the model folder.
_OLIVE_METADATA = {"footprint.json", "output_footprint.json", "run_history.txt", "model_config.json"}


def _builder_options(target: Target, block_size: int, accuracy_level: int) -> dict[str, str]:
    options: dict[str, str] = {}
    if target.quantized:
        options |= {"int4_block_size": str(block_size), "int4_accuracy_level": str(accuracy_level)}
    if target.prunes_lm_head:
        options["prune_lm_head"] = "true"
    return options


def olive_workflow(
    source_dir: Path, target: Target, out: Path, cache: Path, *, block_size: int, accuracy_level: int
) -> dict:
    provider = "CUDAExecutionProvider" if target.device == "cuda" else "CPUExecutionProvider"
    builder: dict[str, object] = {"type": "ModelBuilder", "precision": target.precision}
    if target.quantized:
        builder |= {"int4_block_size": block_size, "int4_accuracy_level": accuracy_level}
    if target.prunes_lm_head:
        builder["extra_options"] = {"prune_lm_head": "true"}
    return {
        "input_model": {"type": "HfModel", "model_path": str(source_dir)},
        "systems": {
            "local": {
                "type": "LocalSystem",
                "accelerators": [
                    {"device": target.device if target.device == "cpu" else "gpu", "execution_providers": [provider]}
                ],
            }
        },
        "passes": {"builder": builder},
        "host": "local",
        "target": "local",
        "output_dir": str(out),
        "cache_dir": str(cache),
        "log_severity_level": 3,
    }


def run_olive(source_dir: Path, target: Target, out: Path, work: Path, *, block_size: int, accuracy_level: int) -> None:
    from olive.workflows import run  # noqa: PLC0415 (heavy; only when converting)

    olive_out = work / "olive-output"
    config = olive_workflow(
        source_dir, target, olive_out, work / "olive-cache", block_size=block_size, accuracy_level=accuracy_level
    )
    run(config)
    if not (olive_out / "genai_config.json").is_file():
        raise errors.ConversionError(f"Olive produced no model (see {olive_out / 'run_history.txt'})")
    out.mkdir(parents=True, exist_ok=True)
    for item in olive_out.iterdir():
        if item.name not in _OLIVE_METADATA and item.is_file():
            shutil.move(str(item), out / item.name)


def run_builder(
    source_dir: Path, target: Target, out: Path, work: Path, *, block_size: int, accuracy_level: int
) -> None:
    options = _builder_options(target, block_size, accuracy_level)
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(source_dir),
        "-o",
        str(out),
        "-p",
        target.precision,
        "-e",
        target.execution_provider,
        "-c",
        str(work / "builder-cache"),
    ]
    if options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    log = work / "builder.log"
    with log.open("w") as sink:
        # Our own interpreter and module, with arguments built above.
        returncode = interrupt.run_child(command, sink)
    if returncode != 0:
        last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["no output"]
        raise errors.ConversionError(f"the model builder failed: {last[0][:300]} (log: {log})")


METHODS = {"olive": run_olive, "builder": run_builder}

"""Random benchmark models (built once into a cache folder) and the variant that never ends early.

`small` is cheap enough that Python and HTTP overheads show; `large` (about 300M parameters) makes
compute the cost, as with a real model. Both are random Phi3s converted to cpu-int4 with the
project's converter (`convert` must be importable: PYTHONPATH=.:images/onnx-server).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE = Path.home() / ".cache" / "onnx-server-bench"
_DONE = ".complete"


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    context: int


SIZES: dict[str, ModelSize] = {
    "small": ModelSize(hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1024, context=1024),
    "large": ModelSize(hidden=1536, layers=12, heads=12, kv_heads=4, intermediate=4096, context=4096),
}


def _folder_name(name: str, size: ModelSize) -> str:
    return f"{name}-{size.hidden}x{size.layers}-ctx{size.context}"


def endless(model_dir: Path, out: Path) -> Path:
    """A copy (weights linked, not copied) whose end-of-sequence id is one the model cannot produce,
    so every generation runs to its max_tokens and the raw engine and the server do the same work."""
    out.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        target = out / item.name
        if item.name != "genai_config.json" and not target.exists():
            target.symlink_to(item.resolve())
    config = json.loads((model_dir / "genai_config.json").read_text())
    config["model"]["eos_token_id"] = [config["model"]["vocab_size"] + 1]
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def build(name: str, cache: Path = CACHE) -> Path:
    """The int4 model for a size, built on first use; a half-built folder is rebuilt."""
    size = SIZES[name]
    root = cache / _folder_name(name, size)
    model_dir = root / "int4-endless"
    if (root / _DONE).is_file():
        return model_dir
    from convert.tiny_model import TinySpec  # noqa: PLC0415 (only when building)
    from convert.tiny_model import build as build_source  # noqa: PLC0415

    shutil.rmtree(root, ignore_errors=True)
    source = build_source(root / "source", TinySpec(**asdict(size)))
    converted = root / "int4"
    command = [sys.executable, "-m", "convert", "--model", str(source), "--method", "builder", "--out", str(converted)]
    result = subprocess.run(  # noqa: S603 (this interpreter, the project's converter, paths of our own)
        [*command, "--no-compare"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"converting the {name} benchmark model failed:\n{result.stderr[-3000:]}")
    shutil.rmtree(source)  # the fp32 source is only needed for the conversion
    endless(converted, model_dir)
    (root / _DONE).write_text(json.dumps(asdict(size)))
    return model_dir

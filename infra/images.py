"""The stack's own images and the tags they are referenced by.

A tag is a hash of the image's build context, so a change to the code is a new tag (never `latest`)
and an unchanged tree keeps its tag across deploys.
"""

import hashlib
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Image name -> the paths (relative to the project root) its Dockerfile copies.
IMAGE_CONTEXTS: dict[str, tuple[str, ...]] = {
    "converter": ("images/converter", "convert"),
    "onnx-server": ("images/onnx-server",),
}
_IGNORED = {"__pycache__", ".pytest_cache"}


def context_tag(paths: tuple[str, ...], root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for relative in paths:
        base = root / relative
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not _IGNORED & set(p.parts)):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def image_ref(registry: str, name: str, variant: str = "cpu") -> str:
    """`<registry>/slm-serving/<name>:<context hash>`; the CUDA build (`--build-arg VARIANT=cuda`) adds `-cuda`."""
    suffix = "" if variant == "cpu" else f"-{variant}"
    return f"{registry}/slm-serving/{name}:{context_tag(IMAGE_CONTEXTS[name])}{suffix}"

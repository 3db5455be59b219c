"""onnxruntime-genai, imported lazily (it is heavy) and typed as Any (it ships no type stubs)."""

import importlib
from typing import Any


def genai() -> Any:
    return importlib.import_module("onnxruntime_genai")

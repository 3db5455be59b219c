"""onnxruntime-genai, typed as Any (it ships no type stubs), with its telemetry switched off."""

import importlib
from typing import Any


def genai() -> Any:
    og = importlib.import_module("onnxruntime_genai")
    # Present from onnxruntime-genai 0.15 on; older builds send no telemetry events.
    disable_events = getattr(og, "disable_telemetry_events", None)
    if disable_events is not None:
        disable_events()
    return og

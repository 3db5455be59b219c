"""onnxruntime-genai, typed as Any (it ships no type stubs), with every telemetry switched off."""

import importlib
import os
from typing import Any


def disable_telemetry() -> None:
    """onnxruntime (1.32 on) keeps a telemetry queue under ~/.cache/Microsoft/DeveloperTools and
    looks up its upload host unless this is set before it initialises; genai's switch below does
    not cover it."""
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"


def genai() -> Any:
    disable_telemetry()
    og = importlib.import_module("onnxruntime_genai")
    # Present from onnxruntime-genai 0.15 on; older builds send no telemetry events.
    disable_events = getattr(og, "disable_telemetry_events", None)
    if disable_events is not None:
        disable_events()
    return og

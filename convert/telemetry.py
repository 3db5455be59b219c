"""Switch off Olive's and onnxruntime-genai's telemetry before either is imported."""

import os

from convert.genai import genai


def disable() -> None:
    os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    og = genai()  # after the environment is set
    # Present from onnxruntime-genai 0.15 on; older builds send no telemetry events.
    disable_events = getattr(og, "disable_telemetry_events", None)
    if disable_events is not None:
        disable_events()

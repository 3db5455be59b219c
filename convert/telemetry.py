"""Switch off Olive's, onnxruntime-genai's and onnxruntime's telemetry before any is imported."""

import os

from convert.genai import genai


def disable() -> None:
    os.environ["OLIVE_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # onnxruntime 1.32 keeps a telemetry queue under ~/.cache/Microsoft/DeveloperTools and looks up
    # its upload host unless this is set before it initialises (genai's switch does not cover it).
    # Subprocesses (Olive's passes) inherit it.
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    og = genai()  # after the environment is set
    # Present from onnxruntime-genai 0.15 on; older builds send no telemetry events.
    disable_events = getattr(og, "disable_telemetry_events", None)
    if disable_events is not None:
        disable_events()

"""Structured JSON logs, one object per line. Prompt text is never logged unless asked for, and
neither is an exception's message: tokenizer and runtime errors repeat their arguments (a whole
prompt, system prompt included). Tracebacks keep their frames and the exception's type."""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, exception_text: bool = False) -> None:
        super().__init__()
        self.exception_text = exception_text

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:
            entry["exception"] = self._exception(record.exc_info)
        return json.dumps(entry, default=str)

    def _exception(self, exc_info: logging._SysExcInfoType) -> str:  # pyright: ignore[reportPrivateUsage]
        if self.exception_text:
            return self.formatException(exc_info)  # type: ignore[arg-type]
        kind, error, tb = exc_info
        frames = "".join(traceback.format_tb(tb))
        name = kind.__name__ if kind is not None else type(error).__name__
        return f"Traceback (most recent call last):\n{frames}{name} (message withheld: it may carry request text)"


def configure(level: int = logging.INFO, exception_text: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(exception_text))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Access lines carry nothing the request log below does not.
    logging.getLogger("uvicorn.access").disabled = True

"""Logging set-up: plain or JSON lines. Never log patient name or ID (UIDs are fine)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", json_format: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom is chatty at INFO (and logs dataset summaries at DEBUG): keep it quiet.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # warnings.warn(...) (Celery's root warning, library deprecations) go through the same format.
    logging.captureWarnings(True)
    if json_format:
        route_library_loggers()


def route_library_loggers() -> None:
    """transformers and diffusers install their own stderr handler and stop propagation, which would
    put plain-text lines into a JSON log: send their records through the root handler instead (and
    switch off their progress bars, which are not log records)."""
    import importlib

    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            lib = importlib.import_module(name)
            lib.disable_default_handler()
            lib.enable_propagation()
            lib.disable_progress_bar()
        except Exception:  # library absent or its logging API changed: plain lines, not a crash
            continue

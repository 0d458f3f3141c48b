"""Structured logging for the services: JSON lines (the default) or plain text.

:func:`setup_logging` installs one handler on the root logger; every record is then written as one
JSON object per line::

    {"ts": "2024-05-01T12:00:00.123Z", "level": "info", "svc": "vgpu_bus",
     "logger": "vgpusim.vgpu_bus.core", "msg": "device created", "uuid": "..."}

Key/values beyond the fixed ones come from ``extra=``: ``log.info("device created",
extra={"uuid": uuid})``.  An exception (``log.exception``) adds ``exc`` with the traceback.

Glossary:
- svc: the service name given to :func:`setup_logging`, stamped on every line.
- extra: the record attributes that are not standard :class:`logging.LogRecord` ones.
- text format: ``ts level svc logger: msg key=value ...`` for humans at a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["JsonFormatter", "TextFormatter", "get_logger", "setup_logging"]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_OURS = "_vgpusim_handler"


def _timestamp(created: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{whole}.{int(created % 1 * 1000):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, svc, logger, msg, extras, and exc if any."""

    def __init__(self, svc: str) -> None:
        super().__init__()
        self.svc = svc

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "svc": self.svc,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``ts level svc logger: msg key=value ...`` then the traceback, if any."""

    def __init__(self, svc: str) -> None:
        super().__init__()
        self.svc = svc

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in _extras(record).items()
        )
        line = (
            f"{_timestamp(record.created)} {record.levelname.lower():<7} {self.svc} {record.name}: "
            f"{record.getMessage()}"
        )
        if pairs:
            line += " " + pairs
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(
    svc: str,
    *,
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    file: Path | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (default stderr) or ``file`` in format ``fmt``.

    Replaces the handler a previous call installed (and only that one: pytest's capture handlers
    stay).  ``level`` is one of debug/info/warning/error.  Returns the handler installed.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}")
    handler: logging.Handler
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter(svc) if fmt == "json" else TextFormatter(svc))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)
    return handler


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (pass ``__name__``)."""
    return logging.getLogger(name)

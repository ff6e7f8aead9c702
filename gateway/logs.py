"""Structured logs: one JSON object a line (or plain text), with the ``extra`` fields a call passes.

No secret reaches a log line: :func:`setup_logging` takes the configuration's secrets (every form of them,
``config.secret_values``) and the formatter replaces each with ``***`` in the finished line, whatever put it
there (a library's exception message, a URL, a header, a traceback). Python warnings go through the same
handler.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

__all__ = ["Redactor", "setup_logging"]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

MASK = "***"


class Redactor:
    """Replaces each of ``secrets`` (longest first) with ``***`` in a text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # each value as it is, then the line (a secret as JSON escapes it is among the forms given)
        return self.redact(json.dumps(_redacted(doc, self.redact), default=str))


def _redacted(value: object, redact: Redactor) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v, redact) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact(str(value))


class TextFormatter(logging.Formatter):
    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(_pairs({k: v for k, v in record.__dict__.items() if k not in _STANDARD}))
        base = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.getMessage()}"
        return self.redact(f"{base} {extras}".rstrip())


def _pairs(fields: dict[str, object], prefix: str = "") -> list[str]:
    """``key=value`` words for a text line: a table as ``key.sub=value``, a list as ``a,b`` (a table in a list as
    JSON): plain words, no Python reprs."""
    out: list[str] = []
    for key, value in fields.items():
        if isinstance(value, dict):
            out += _pairs({str(k): v for k, v in value.items()}, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            items = (json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v) for v in value)
            out.append(f"{prefix}{key}={','.join(items)}")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def setup_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = ()) -> None:
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(redact) if fmt == "json" else TextFormatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    for noisy in ("aiomqtt", "asyncio", "influxdb_client"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))

"""Recorded MQTT traffic: what ``edgekit-gateway run --record FILE`` writes and ``replay FILE`` reads.

One JSON object per line: ``{"topic": "...", "payload": "<base64>", "received_ms": 1764072060500}``, in
the order the gateway received the messages. The payload is base64 because a message may be any bytes
(a malformed one is worth keeping: replayed, it becomes the same dead letter again).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .errors import GatewayError

__all__ = ["Record", "RecordError", "Recorder", "count_records", "read_records"]


class RecordError(GatewayError):
    """A recording cannot be read or written; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    payload: bytes
    received_ms: int

    def to_json(self) -> str:
        doc = {"topic": self.topic, "payload": base64.b64encode(self.payload).decode(), "received_ms": self.received_ms}
        return json.dumps(doc, separators=(",", ":"))


class Recorder:
    """Appends each message to a file, one line each, flushed at once (a crash loses at most a partial line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        try:
            self._f: IO[str] = open(path, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise RecordError(f"cannot open {str(path)!r} for recording: {exc.strerror}") from exc

    def write(self, topic: str, payload: bytes, received_ms: int) -> None:
        self._f.write(Record(topic, payload, received_ms).to_json() + "\n")
        self.count += 1

    def close(self) -> None:
        self._f.close()


def _parse(text: str, where: str) -> Record:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{where}: not JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise RecordError(f"{where}: expected an object, got {text[:60]!r}")
    topic, payload, received = doc.get("topic"), doc.get("payload"), doc.get("received_ms")
    if not isinstance(topic, str) or not isinstance(payload, str):
        raise RecordError(f"{where}: 'topic' and 'payload' must be strings")
    if not isinstance(received, int) or isinstance(received, bool) or received < 0:
        raise RecordError(f"{where}: 'received_ms' must be a non-negative integer, got {received!r}")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise RecordError(f"{where}: 'payload' is not base64: {exc}") from exc
    return Record(topic, data, received)


def read_records(path: Path) -> Iterator[Record]:
    """The records of a file, in order; a bad line raises :class:`RecordError` naming it (blank lines are skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f, 1):
                if text.strip():
                    yield _parse(text, f"{path}:{n}")
    except OSError as exc:
        raise RecordError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text: {exc.reason}") from exc


def count_records(path: Path) -> int:
    """Non-blank lines (for progress); raises :class:`RecordError` if the file cannot be read."""
    try:
        with open(path, "rb") as f:
            return sum(1 for text in f if text.strip())
    except OSError as exc:
        raise RecordError(f"cannot read {str(path)!r}: {exc.strerror}") from exc

"""The gateway's exceptions: one base, specific subclasses, foreign errors converted where they enter."""

from __future__ import annotations

__all__ = ["ConfigError", "DecodeError", "GatewayError", "SinkError", "StateError"]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; the message names the key and the value."""


class StateError(GatewayError):
    """The durable state file cannot be used (damaged, unwritable, in use, or written with another
    configuration); the message names the file and what is wrong."""


class DecodeError(GatewayError):
    """A message breaks the wire contract.

    ``reason`` is a stable code from ``docs/protocol.md`` (it becomes the ``reason`` tag of the
    dead-letter record); ``detail`` says what was wrong, with the offending value.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SinkError(GatewayError):
    """A write to a sink failed.

    ``retryable`` tells whether trying again later can succeed (server down, 5xx, timeout) or not
    (the server refused the data: 4xx). ``retry_after`` is a hint in seconds when the server gave one.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after

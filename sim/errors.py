"""The simulator's exceptions: one base, specific subclasses, foreign errors converted where they enter."""

from __future__ import annotations

__all__ = ["PublishError", "SimError", "SpecError"]


class SimError(Exception):
    """Base of every error the simulator raises on purpose."""


class SpecError(SimError, ValueError):
    """A fleet specification or a broker URL is invalid; the message names the field and the value."""


class PublishError(SimError):
    """Publishing failed: the broker is unreachable, refused the client, or did not acknowledge in time."""

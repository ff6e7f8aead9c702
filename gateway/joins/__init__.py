"""Interval joins (``[[joins]]``): two streams joined per key (site, device property or group) in event time."""

from .config import JoinError, JoinSide, JoinSpec, check_joins, parse_between, parse_join, parse_joins
from .operator import JOIN_MEASUREMENT, Joined, Joins, JoinsSpec

__all__ = [
    "JOIN_MEASUREMENT",
    "JoinError",
    "JoinSide",
    "JoinSpec",
    "Joined",
    "Joins",
    "JoinsSpec",
    "check_joins",
    "parse_between",
    "parse_join",
    "parse_joins",
]

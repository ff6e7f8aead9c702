"""What the gateway is doing right now: per-device event time and watermarks, the latest windows and alerts.

:class:`LiveView` watches what the pipeline produces (it never changes it) and gives

- ``as_dict(now_ms)``: the part of the stats file that ``edgekit-gateway top`` draws (``devices``,
  ``windows``, ``alerts``);
- ``health_lines(now_ms, stats)``: two measurements for the dashboards, in *processing* time (the
  gateway's clock, unlike everything else it writes): ``gateway_health`` (the counters, every
  ``HEALTH_INTERVAL_MS``) and ``device_watermark`` (each device's watermark and its lag behind the
  gateway's clock, every ``DEVICE_INTERVAL_MS``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .alerts import Alert
from .engine import Engine
from .engine.outputs import LateReading, WindowResult
from .lineproto import NS_PER_MS, line
from .model import MetricValue, Reading, StatusUpdate
from .schema import FieldType, declare

__all__ = [
    "DEVICE_INTERVAL_MS",
    "DEVICE_WATERMARK",
    "GATEWAY_HEALTH",
    "HEALTH_FIELDS",
    "HEALTH_INTERVAL_MS",
    "LiveView",
    "health_fields",
]

HEALTH_INTERVAL_MS: Final = 10_000
DEVICE_INTERVAL_MS: Final = 60_000
RECENT: Final = 20

# (stats file section, counter) -> field of gateway_health
HEALTH_FIELDS: Final[dict[str, tuple[str, str]]] = {
    "messages": ("pipeline", "messages"),
    "readings_accepted": ("pipeline", "readings_accepted"),
    "duplicates": ("pipeline", "duplicates"),
    "dead_letters": ("pipeline", "dead_letters"),
    "window_results": ("pipeline", "window_results"),
    "late_readings": ("pipeline", "late_readings"),
    "alerts": ("pipeline", "alerts"),
    "points_written": ("sink", "points_written"),
    "points_refused": ("sink", "points_refused"),
    "points_unwritable": ("sink", "points_unwritable"),
    "sink_dead_letters_lost": ("sink", "dead_letters_lost"),
    "log_failures": ("mqtt", "log_failures"),
    "checkpoint_failures": ("state", "checkpoint_failures"),
    "write_failures": ("sink", "write_failures"),
    "pending": ("sink", "pending"),
    "last_write_ms": ("sink", "last_write_ms"),
    "mqtt_connected": ("mqtt", "connected"),
    "mqtt_connects": ("mqtt", "connects"),
    "outbox": ("mqtt", "outbox"),
}
HEALTH_TYPES: Final[dict[str, FieldType]] = {"last_write_ms": "float", "mqtt_connected": "boolean"}
"""The fields of gateway_health that are not integers (counters and levels)."""
_HEALTH_DECLARED: Final[dict[str, FieldType]] = {
    name: HEALTH_TYPES.get(name, "integer") for name in (*HEALTH_FIELDS, "devices", "devices_active", "uptime_s")
}


def health_fields(stats: Mapping[str, Any]) -> dict[str, MetricValue]:
    """The fields of a ``gateway_health`` point from the stats file's sections (:data:`HEALTH_FIELDS`; those the
    stats lack are left out), in their declared types."""
    fields: dict[str, MetricValue] = {}
    for name, (section, key) in HEALTH_FIELDS.items():
        value = stats.get(section, {}).get(key)
        if isinstance(value, (bool, int, float)):
            kind = _HEALTH_DECLARED[name]
            fields[name] = bool(value) if kind == "boolean" else float(value) if kind == "float" else int(value)
    return fields


GATEWAY_HEALTH: Final = declare(
    "gateway_health",
    tags=("gateway",),
    fields=_HEALTH_DECLARED,
    time="the gateway's clock (processing time), every 10 s",
    module=__name__,
)
DEVICE_WATERMARK: Final = declare(
    "device_watermark",
    tags=("gateway", "site", "device"),
    fields={
        "watermark_ms": "integer",
        "watermark_lag_ms": "integer",
        "last_event_ms": "integer",
        "last_seen_ms": "integer",
        "readings": "integer",
        "late": "integer",
        "active": "boolean",
    },
    time="the gateway's clock (processing time), every 60 s",
    module=__name__,
)


@dataclass(slots=True)
class _Device:
    site: str
    readings: int = 0
    late: int = 0
    fw: str | None = None  # from the device's latest status: its firmware version ...
    ota: str | None = None  # ... and what its update is doing (firmware/ota.py)


class LiveView:
    """Watches the pipeline's output; reads the engine's device tracker for event time and watermarks."""

    def __init__(self, engine: Engine, gateway: str, started_ms: int) -> None:
        self.engine = engine
        self.gateway = gateway
        self.started_ms = started_ms
        self.devices: dict[str, _Device] = {}
        self.windows: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._next_health = 0
        self._next_devices = 0

    def observe(
        self,
        readings: list[Reading],
        outputs: list[WindowResult | LateReading],
        alerts: list[Alert],
        status: StatusUpdate | None = None,
    ) -> None:
        if status is not None and status.state != "offline":  # the last will carries no fields
            d = self.devices.get(status.device)
            if d is None:
                d = self.devices[status.device] = _Device(status.site)
            fw, ota = status.fields.get("fw"), status.fields.get("ota")
            d.fw = fw if isinstance(fw, str) else d.fw
            d.ota = ota if isinstance(ota, str) else None
        for r in readings:
            d = self.devices.get(r.device)
            if d is None:
                d = self.devices[r.device] = _Device(r.site)
            d.readings += 1
        for o in outputs:
            if isinstance(o, WindowResult):
                self.windows.append(
                    {"window": o.window, "key": o.key, "site": o.site, "metric": o.metric, "start_ms": o.start_ms,
                     "end_ms": o.end_ms, "count": o.count, "mean": o.aggregates.get("mean"),
                     "revision": o.revision, "fired": o.fired}
                )  # fmt: skip
            elif o.device:
                d = self.devices.get(o.device)
                if d is None:
                    d = self.devices[o.device] = _Device(o.site)
                d.late += 1
        for a in alerts:
            self.alerts.append(
                {"id": a.id, "source": a.source, "name": a.name, "site": a.site, "key": a.key,
                 "severity": a.severity, "last_ms": a.last_ms, "message": a.message}
            )  # fmt: skip

    def device_names(self) -> list[str]:
        """Every device the rows have, in their order (sorted)."""
        return sorted(set(self.engine.tracker.state) | set(self.devices))

    def device_rows(self, now_ms: int, devices: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per device (``devices``, of :meth:`device_names`; None: all of them): site, readings, late, last event
        time, last seen, watermark (with the device's bound)."""
        tracker = self.engine.tracker
        rows: dict[str, dict[str, Any]] = {}
        for device in self.device_names() if devices is None else devices:
            e = tracker.state.get(device)
            d = self.devices.get(device)
            if e is not None:
                site = e[0]
            elif d is not None:
                site = d.site
            else:  # gone since its name was listed (a slice of the stats file later)
                continue
            wm = tracker.device_wm(device, self.engine.spec.watermark.bound_for(device)) if e else None
            rows[device] = {
                "site": site,
                "readings": d.readings if d else 0,
                "late": d.late if d else 0,
                "last_event_ms": e[1] if e else None,
                "last_seen_ms": e[3] if e else None,
                "watermark_ms": wm,
                "watermark_lag_ms": None if wm is None else now_ms - wm,
                "active": bool(e and tracker.is_active(device, now_ms)),
                "fw": d.fw if d else None,
                "ota": d.ota if d else None,
            }
        return rows

    def as_dict(self, now_ms: int, devices: object = None) -> dict[str, object]:
        """``devices``: what to give as the devices' rows instead of :meth:`device_rows` (None: those)."""
        return {
            "now_ms": now_ms,
            "started_ms": self.started_ms,
            "devices": self.device_rows(now_ms) if devices is None else devices,
            "windows": list(self.windows),
            "alerts": list(self.alerts),
        }

    def health_lines(self, now_ms: int, stats: Mapping[str, Any], devices: bool = True) -> list[str]:
        """The health points due at ``now_ms`` (none between intervals); without ``devices``, only
        ``gateway_health``: the caller makes the ``device_watermark`` points when :meth:`devices_due`, with
        :meth:`device_lines`, a slice of devices at a time."""
        out: list[str] = []
        ts = now_ms * NS_PER_MS
        if now_ms >= self._next_health:
            self._next_health = now_ms - now_ms % HEALTH_INTERVAL_MS + HEALTH_INTERVAL_MS
            tracker = self.engine.tracker
            fields = health_fields(stats)
            fields["devices"] = len(self.device_names())  # as many as rows, without making them (issue 19)
            fields["devices_active"] = sum(1 for device in tracker.state if tracker.is_active(device, now_ms))
            fields["uptime_s"] = (now_ms - self.started_ms) // 1000
            out.append(line(GATEWAY_HEALTH, {"gateway": self.gateway}, fields, ts))
        if devices and self.devices_due(now_ms):
            out += self.device_lines(now_ms)
        return out

    def devices_due(self, now_ms: int) -> bool:
        """Whether the ``device_watermark`` points are due at ``now_ms``; if so, the next are due an interval on."""
        if now_ms < self._next_devices:
            return False
        self._next_devices = now_ms - now_ms % DEVICE_INTERVAL_MS + DEVICE_INTERVAL_MS
        return True

    def device_lines(self, now_ms: int, devices: Sequence[str] | None = None) -> list[str]:
        """The ``device_watermark`` point of each of ``devices`` (of :meth:`device_names`; None: all)."""
        out: list[str] = []
        ts = now_ms * NS_PER_MS
        for device, r in self.device_rows(now_ms, devices).items():
            f: dict[str, MetricValue] = {
                "readings": int(r["readings"]), "late": int(r["late"]), "active": bool(r["active"])
            }  # fmt: skip
            for key in ("watermark_ms", "watermark_lag_ms", "last_event_ms", "last_seen_ms"):
                if r[key] is not None:
                    f[key] = int(r[key])
            tags = {"gateway": self.gateway, "site": r["site"], "device": device}
            out.append(line(DEVICE_WATERMARK, tags, f, ts))
        return out

"""Health: Prometheus text on ``/metrics`` (prometheus-client) and a JSON ``/healthz``, served by aiohttp.

Values are read from the gateway's own counters when scraped (a custom collector), so nothing on the hot
path touches prometheus-client except the InfluxDB write-latency histogram. Watermark lag is
``now - device watermark`` in seconds, one series per device (fleet-sized cardinality, by design).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .bridge import FileForwarder, KafkaForwarder
from .ingest import IngestStats, Outbox
from .notify import Notifier
from .pipeline import Pipeline
from .spool import OTHER, RAW, SpoolingSink
from .state import StateStore

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["GatewayMetrics", "GatewayView", "Served", "notify_metrics", "sink_metrics"]


class GatewayView(Protocol):
    """What the metrics read of the running gateway (``gateway.app.Gateway``), so that this module does not
    depend on the one that wires everything together."""

    @property
    def store(self) -> StateStore: ...
    @property
    def sink(self) -> SpoolingSink: ...
    @property
    def ingest_stats(self) -> IngestStats: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def pos(self) -> int: ...
    @property
    def checkpoints(self) -> int: ...
    @property
    def checkpoint_failures(self) -> int: ...
    @property
    def replayed(self) -> int: ...
    @property
    def now_ms(self) -> Callable[[], int]: ...
    @property
    def notifier(self) -> Notifier | None: ...
    @property
    def reloads(self) -> int: ...
    @property
    def reload_failures(self) -> int: ...
    @property
    def restarted(self) -> dict[str, int]: ...
    @property
    def bridge(self) -> FileForwarder | None: ...
    @property
    def kafka(self) -> KafkaForwarder | None: ...


class Served:
    """``/metrics``, ``/healthz`` and ``/readyz`` over aiohttp, from :meth:`render`, :meth:`health` and
    :meth:`ready`."""

    def render(self) -> bytes:
        raise NotImplementedError

    def health(self) -> dict[str, object]:
        raise NotImplementedError

    def ready(self, health: dict[str, object]) -> bool:
        raise NotImplementedError

    async def serve(
        self, host: str, port: int, reload: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]] | None = None
    ) -> web.AppRunner:
        """``/metrics``, ``/healthz``, ``/readyz``; and with ``reload``, ``POST /reload`` for clients on this host
        (``edgekit-gateway reload``): 200 when applied, 422 when refused, the outcome as JSON either way."""

        async def metrics(_: web.Request) -> web.Response:
            resp = web.Response(body=self.render())
            resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return resp

        async def healthz(_: web.Request) -> web.Response:
            # liveness: 200 while the process answers; the body says whether it is degraded
            return web.Response(text=json.dumps(self.health()), content_type="application/json")

        async def readyz(_: web.Request) -> web.Response:
            body = self.health()
            return web.Response(
                text=json.dumps(body), content_type="application/json", status=200 if self.ready(body) else 503
            )

        async def do_reload(request: web.Request) -> web.Response:
            if not _local(request.remote):  # only a local user or the service manager may make it re-read its file
                return web.Response(status=403, text="reload: only from this host (loopback)\n")
            assert reload is not None
            ok, body = await reload()
            return web.Response(text=json.dumps(body), content_type="application/json", status=200 if ok else 422)

        app = web.Application()
        if reload is not None:
            app.router.add_post("/reload", do_reload)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner


class GatewayMetrics(Served):
    def __init__(self, gw: GatewayView) -> None:
        self.gw = gw
        self.registry = CollectorRegistry(auto_describe=False)
        self.write_latency = Histogram(
            "edgekit_influx_write_seconds",
            "InfluxDB write latency of successful batches",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        self.messages_in = 0
        self._samples: deque[tuple[float, int]] = deque(maxlen=11)
        self.max_spool_bytes = 0
        self.max_memory_lines = 0

    def observe_write(self, seconds: float) -> None:
        self.write_latency.observe(seconds)

    def sample(self) -> None:
        """Called once a second: keeps the last ten seconds of message counts for the rate gauge."""
        self._samples.append((time.monotonic(), self.messages_in))
        self.max_spool_bytes = max(self.max_spool_bytes, self.gw.store.spool_bytes)
        self.max_memory_lines = max(self.max_memory_lines, self.gw.sink.in_memory)

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> dict[str, object]:
        gw = self.gw
        return {
            "status": "ok"
            if gw.ingest_stats.connected and gw.sink.healthy and not gw.ingest_stats.log_failing
            else "degraded",
            "log_failing": gw.ingest_stats.log_failing,
            "mqtt_connected": gw.ingest_stats.connected,
            "influx_healthy": gw.sink.healthy,
            "spool_lines": gw.store.spool_lines,
            "log_pos": gw.pos,
        }

    def ready(self, health: dict[str, object]) -> bool:
        return bool(health["mqtt_connected"])


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _local(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


class _Collector(Collector):
    def __init__(self, m: GatewayMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        gw = self.m.gw
        s = gw.pipeline.stats
        sink = gw.sink
        counter, gauge = _counter, _gauge

        yield counter("edgekit_messages", "MQTT messages taken by the pipeline (replays included)", s.messages)
        yield gauge("edgekit_devices", "Devices with state (at most devices.max_devices)", len(gw.pipeline.devices))
        yield gauge("edgekit_ingest_rate", "Messages per second over the last ten seconds", self.m.rate)
        yield counter("edgekit_readings_accepted", "Readings accepted (new identities)", s.readings_accepted)
        yield counter("edgekit_duplicates", "Readings dropped as duplicates", s.duplicates)
        dead = CounterMetricFamily("edgekit_dead_letters", "Dead letters by reason", labels=["reason"])
        by_reason = dict(s.dead_by_reason)
        for reason, n in sink.stats.by_reason().items():  # lines the sink could not write (influx_refused, ...)
            by_reason[reason] = by_reason.get(reason, 0) + n
        for reason, n in sorted(by_reason.items()):
            dead.add_metric([reason], n)
        yield dead
        yield counter("edgekit_late_readings", "Readings routed to late_reading", s.late_readings)
        yield counter("edgekit_window_results", "Window results emitted", s.window_results)
        yield counter("edgekit_alerts", "Alerts emitted", s.alerts)
        yield counter("edgekit_fast_alerts", "Alerts of the fast (arrival-time) path", s.fast_alerts)
        verdicts = CounterMetricFamily(
            "edgekit_alert_verdicts", "Verdicts of the event-time path on fast alerts (on = both)", labels=["verdict"]
        )
        verdicts.add_metric(["confirmed"], s.alerts_confirmed)
        verdicts.add_metric(["retracted"], s.alerts_retracted)
        verdicts.add_metric(["missed_fast"], s.alerts_missed_fast)
        yield verdicts
        joins = gw.pipeline.joins
        if joins.joins:  # interval joins (docs/correlation.md)
            yield counter("edgekit_joined", "Joined records written ([[joins]])", s.joined)
            yield gauge("edgekit_join_events", "Events the joins hold (waiting and kept)", joins.events())
            dropped = CounterMetricFamily(
                "edgekit_join_dropped", "Join events not joined: late, or over max_events", labels=["reason"]
            )
            for reason in ("late", "shed", "forced"):
                dropped.add_metric([reason], joins.stats[reason])
            yield dropped
        relative = gw.pipeline.relative
        if relative:  # group-relative values (docs/cep.md)
            yield counter("edgekit_relative_values", "Group-relative values written ([windows.relative])",
                          s.relative_values)  # fmt: skip
            yield gauge("edgekit_relative_held", "Member values waiting for their group's window to close",
                        relative.open_values())  # fmt: skip
            skipped = CounterMetricFamily(
                "edgekit_relative_skipped",
                "Member results not compared: late for their group, updates, or without enough others",
                labels=["reason"],
            )
            for reason in ("late", "updates", "alone"):
                skipped.add_metric([reason], relative.stats[reason])
            yield skipped
        depth = GaugeMetricFamily("edgekit_queue_depth", "Items waiting, by queue", labels=["queue"])
        depth.add_metric(["mqtt_received"], gw.ingest_stats.queued)
        depth.add_metric(["sink_memory_raw"], len(sink.memory[RAW]))
        depth.add_metric(["sink_memory_other"], len(sink.memory[OTHER]))
        depth.add_metric(["outbox"], len(gw.outbox.queue))
        depth.add_metric(["log"], gw.store.log_rows)
        yield depth
        yield from sink_metrics(gw.store, sink)
        yield gauge("edgekit_mqtt_connected", "1 while connected to the broker", float(gw.ingest_stats.connected))
        yield counter("edgekit_checkpoints", "Checkpoints taken", gw.checkpoints)
        yield counter(
            "edgekit_checkpoint_failures", "Checkpoints that failed (tried again later; nothing moved)",
            gw.checkpoint_failures,
        )  # fmt: skip
        yield counter(
            "edgekit_log_failures", "Times the durable log could not take messages (not acknowledged; tried again)",
            gw.ingest_stats.log_failures,
        )  # fmt: skip
        yield gauge("edgekit_replayed", "Log records replayed at the last start", gw.replayed)
        reloads = CounterMetricFamily("edgekit_reloads", "Configuration reloads, by outcome", labels=["outcome"])
        reloads.add_metric(["applied"], gw.reloads)
        reloads.add_metric(["refused"], gw.reload_failures)
        yield reloads
        restarted = CounterMetricFamily(
            "edgekit_reload_restarted", "Operators a reload restarted (their definition changed)", labels=["kind"]
        )
        for kind, n in sorted(gw.restarted.items()):
            restarted.add_metric([kind], n)
        yield restarted
        lag = GaugeMetricFamily(
            "edgekit_watermark_lag_seconds", "Wall clock minus the device's event-time watermark", labels=["device"]
        )
        now = gw.now_ms()
        tracker = gw.pipeline.engine.tracker
        for device, entry in sorted(tracker.state.items()):
            max_t, flushed = entry[1], entry[2]
            marks = [max_t - tracker.spec.bound_for(device)] if max_t is not None else []
            if flushed is not None:
                marks.append(flushed + 1)
            if marks:
                lag.add_metric([device], (now - max(marks)) / 1000)
        yield lag
        if gw.notifier is not None:
            yield from notify_metrics(gw.notifier)
        if gw.bridge is not None:  # bridge mode (docs/scale-out.md)
            b = gw.bridge
            yield counter("edgekit_bridge_lines", "Readings written to the bridge's files (a replay's again)", b.lines)
            yield counter("edgekit_bridge_files", "Files renamed into the Flink job's sight", b.files)
            yield gauge("edgekit_bridge_in_progress_bytes", "Bytes of the file in progress", b.size)
            if gw.kafka is not None:
                yield counter("edgekit_kafka_sent", "Readings acknowledged by Kafka (acks=all)", gw.kafka.sent)
                yield counter("edgekit_kafka_failures", "Times Kafka could not be reached (retried)", gw.kafka.failures)


def sink_metrics(store: StateStore, sink: SpoolingSink) -> Iterator[Metric]:
    """The spooling sink's metrics (InfluxDB writes, memory, spool), the same in every mode."""
    counter, gauge = _counter, _gauge

    yield gauge("edgekit_spool_lines", "Lines in the on-disk spool", store.spool_lines)
    yield gauge("edgekit_spool_bytes", "Bytes of line protocol in the on-disk spool", store.spool_bytes)
    spilled = CounterMetricFamily(
        "edgekit_sink_spilled_lines", "Lines moved to the spool because memory was full", labels=["class"]
    )
    spilled.add_metric(["raw"], sink.spilled_lines[RAW])
    spilled.add_metric(["other"], sink.spilled_lines[OTHER])
    yield spilled
    yield counter("edgekit_sink_full_waits", "Times ingest waited because memory and spool were full", sink.waits)
    st = sink.stats
    yield counter("edgekit_points_written", "Points written to InfluxDB", st.points_written)
    yield counter("edgekit_points_refused", "Points InfluxDB refused, each a dead letter", st.points_refused)
    yield counter(
        "edgekit_points_unwritable", "Points the writer could not send, each a dead letter unwritable",
        st.points_unwritable,
    )  # fmt: skip
    sink_dead = CounterMetricFamily(
        "edgekit_sink_dead_letters", "Dead letters of refused or unwritable points, by outcome", labels=["outcome"]
    )
    sink_dead.add_metric(["written"], st.dead_letters_written)
    sink_dead.add_metric(["lost"], st.dead_letters_lost)  # InfluxDB refused the dead letter too
    yield sink_dead
    yield counter("edgekit_sink_isolations", "Batches cut up to find refused points", st.isolations)
    yield counter("edgekit_write_failures", "Failed InfluxDB writes (retried)", st.write_failures)
    yield gauge("edgekit_influx_up", "1 when the last InfluxDB write succeeded", 1.0 if sink.healthy else 0.0)


def notify_metrics(n: Notifier) -> Iterator[Metric]:
    """``[[notify]]`` (docs/notify.md): per target, what was sent, what failed (and was retried), what was given
    up, what waits; and the alerts the full inbox shed."""
    yield CounterMetricFamily("edgekit_notify_shed", "Alerts not notified because the notifier's inbox was full",
                              value=n.shed)  # fmt: skip
    sent = CounterMetricFamily("edgekit_notify_sent", "Notification messages delivered", labels=["target"])
    failed = CounterMetricFamily(
        "edgekit_notify_failures", "Failed notification deliveries (retried with backoff)", labels=["target"]
    )
    dropped = CounterMetricFamily(
        "edgekit_notify_dropped", "Notification messages given up, by reason", labels=["target", "reason"]
    )
    suppressed = CounterMetricFamily(
        "edgekit_notify_suppressed", "Alerts of an open incident not sent again (repeats)", labels=["target"]
    )
    pending = GaugeMetricFamily("edgekit_notify_pending", "Notification messages waiting to go", labels=["target"])
    for t in n.targets:
        name = t.spec.name
        sent.add_metric([name], t.stats.sent)
        failed.add_metric([name], t.stats.failures)
        for reason in ("expired", "overflow"):
            dropped.add_metric([name, reason], t.stats.dropped[reason])
        suppressed.add_metric([name], t.router.suppressed)
        pending.add_metric([name], len(t.pending))
    yield from (sent, failed, dropped, suppressed, pending)

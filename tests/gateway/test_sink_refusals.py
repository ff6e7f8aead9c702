"""Lines InfluxDB refuses, and lines the writer cannot send, are isolated: the rest of their batch is written and
each of them becomes a dead letter with its reason (``influx_refused`` with InfluxDB's message, ``unwritable``
with the error); the counters say exactly what was written and what was not.

Against the real servers: InfluxDB 1.6 (which refuses a float for a field that is an integer in the shard with
"partial write: field type conflict", and a type clash inside one new batch with "field type conflict",
writing nothing at all) and VictoriaMetrics through influxdb-client (the ``v2`` target).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from helpers import influx_query, influx_write, poll, running_gateway, vm_export, wait_for
from services import Proc

from gateway.config import InfluxConfig, parse_config
from gateway.sinks import make_writer
from gateway.spool import SpoolingSink
from gateway.state import StateStore
from sim.publish import BrokerConfig, publish
from sim.wire import Outgoing

pytestmark = pytest.mark.integration

T0 = 1_764_072_000_000
NS = 1_000_000


def honest(device: str, n: int = 40, site: str = "s") -> list[str]:
    return [
        f'reading,device={device},site={site} temp_c={20 + i / 8},boot=1i,seq={i}i,q="s" {(T0 + i * 1000) * NS}'
        for i in range(n)
    ]


def short_id() -> str:
    return uuid.uuid4().hex[:8]


async def run_sink(cfg: InfluxConfig, tmp_path: Path, lines: list[str]) -> SpoolingSink:
    """``lines`` through a spooling sink with the real writer, in one batch, until nothing is pending."""
    store = StateStore(tmp_path / "state.db")
    sink = SpoolingSink(make_writer(cfg), cfg, store, spool_max_bytes=10**9)
    await sink.add(lines)
    await sink.start()
    try:
        await wait_for(lambda: sink.pending == 0, lambda: f"the sink done ({sink.pending} pending)")
    finally:
        await sink.close()
        store.close()
    return sink


def v1(url: str, db: str) -> InfluxConfig:
    return InfluxConfig(target="v1", url=url, database=db, flush_interval_ms=20, timeout_s=5.0, retry_max_s=0.5)


# ------------------------------------------------------------------------------------ InfluxDB refuses a line


async def test_a_line_influxdb_refuses_is_dead_lettered_and_the_rest_written(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str
) -> None:
    """One device's message: 40 honest readings and one whose metric is an integer in the shard already (an older
    writer put it there). InfluxDB 1.6 takes the 40 and refuses the one ("partial write ... dropped=1")."""
    prefix = f"r{short_id()}"
    influx_write(influxdb_v1.url, influx_db, f"reading,device=old,site=s level=1i {T0 * NS}")
    rows = [{"b": 1, "s": i, "t": T0 + i * 1000, "q": "s", "m": {"temp_c": 20 + i / 8}} for i in range(40)]
    rows.append({"b": 1, "s": 40, "t": T0 + 40_000, "q": "s", "m": {"level": 2.5}})
    msg = Outgoing(f"{prefix}/s/d1/readings", json.dumps({"v": 1, "dev": "d1", "r": rows}).encode(), "batch")
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": prefix,
                     "client_id": f"gw-{short_id()}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "flush_interval_ms": 50},
        },
        env={},
    )  # fmt: skip
    async with running_gateway(cfg) as gw:
        await publish([msg], BrokerConfig(mosquitto.host, mosquitto.port), client_id=f"sim-{prefix}")
        await wait_for(lambda: gw.pipeline.stats.readings_accepted == 41, "the readings taken")
        await wait_for(lambda: gw.sink.pending == 0, "the batch done")
        stats = gw.snapshot_stats()["sink"]
        metrics = gw.metrics.render().decode()

    stored = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device = 'd1'", epoch="ms")
    assert sorted(r["seq"] for r in stored) == list(range(40))
    dead = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter", epoch="ns")
    assert len(dead) == 1
    (d,) = dead
    assert (d["reason"], d["site"], d["device"]) == ("influx_refused", "s", "d1")
    assert "field type conflict" in d["detail"] and '"level"' in d["detail"]
    assert d["payload"].startswith("reading,") and "level=2.5" in d["payload"] and "seq=40i" in d["payload"]
    assert T0 + 40_000 <= d["time"] // NS < T0 + 40_001  # at the refused point's millisecond

    assert isinstance(stats, dict)
    assert stats["points_refused"] == 1 and stats["dead_letters_written"] == 1
    assert stats["points_unwritable"] == 0 and stats["dead_letters_lost"] == 0
    assert "edgekit_points_refused_total 1.0" in metrics
    assert 'edgekit_dead_letters_total{reason="influx_refused"} 1.0' in metrics


async def test_a_type_clash_inside_one_batch(influxdb_v1: Proc, influx_db: str, tmp_path: Path) -> None:
    """InfluxDB 1.6 writes nothing of a batch in which a new field has two types ("field type conflict"):
    the isolation writes every line but the one that clashes with what was written before it."""
    lines = [*honest("d1", 20), "reading,device=d2,site=s level=1i 1764072000000000000"]
    lines += [*honest("d3", 20), "reading,device=d4,site=s level=2.5 1764072000000000000"]
    sink = await run_sink(v1(influxdb_v1.url, influx_db), tmp_path, lines)

    stored = influx_query(influxdb_v1.url, influx_db, "SELECT count(*) FROM reading GROUP BY device")
    assert {r["device"]: max(v or 0 for k, v in r.items() if k.startswith("count_")) for r in stored} == {
        "d1": 20,
        "d2": 1,
        "d3": 20,
    }
    (d,) = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert (d["reason"], d["device"]) == ("influx_refused", "d4") and "field type conflict" in d["detail"]
    s = sink.stats
    assert (s.points_written, s.points_refused, s.points_unwritable) == (41, 1, 0)
    assert (s.dead_letters_written, s.dead_letters_lost) == (1, 0)


async def test_a_dead_letter_influxdb_refuses_is_counted_not_retried(
    influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    """The dead letter of a refused line is refused too (its ``detail`` field is an integer in this shard):
    it is logged and counted as lost, and the sink goes on."""
    influx_write(influxdb_v1.url, influx_db, f"reading,device=old,site=s level=1i {T0 * NS}")
    influx_write(influxdb_v1.url, influx_db, f"dead_letter,reason=other detail=1i {T0 * NS}")
    lines = [*honest("d1"), f"reading,device=d2,site=s level=2.5 {T0 * NS}"]
    sink = await run_sink(v1(influxdb_v1.url, influx_db), tmp_path, lines)

    s = sink.stats
    assert (s.points_written, s.points_refused, s.dead_letters_written, s.dead_letters_lost) == (40, 1, 0, 1)
    assert len(influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device = 'd1'")) == 40


async def test_victoria_metrics_refuses_no_type(victoria_metrics: Proc, tmp_path: Path) -> None:
    """VictoriaMetrics through influxdb-client (``v2``) takes an integer and a float of one field alike: the
    same batch that InfluxDB 1.6 partly refuses is written whole, and nothing is counted refused."""
    site = f"site-{short_id()}"
    cfg = InfluxConfig(
        target="v2", url=victoria_metrics.url, org="o", bucket="b", token="t", flush_interval_ms=20, retry_max_s=0.5
    )
    lines = [
        f"reading,device=old,site={site} level=1i {T0 * NS}",
        *honest("d1", 40, site),
        f"reading,device=d2,site={site} level=2.5 {T0 * NS}",
    ]
    sink = await run_sink(cfg, tmp_path, lines)

    def levels() -> dict[str, list[float]]:
        found = vm_export(victoria_metrics.url, f'{{__name__="reading_level",site="{site}"}}')
        return {x["metric"]["device"]: x["values"] for x in found}

    assert poll(levels, until=lambda got: len(got) == 2) == {"old": [1], "d2": [2.5]}
    s = sink.stats
    assert (s.points_written, s.points_refused, s.points_unwritable, s.isolations) == (42, 0, 0, 0)


# ------------------------------------------------------------------------------ a line the writer cannot send

BAD = f'reading,device=d9,site=s label="bad \ud800 string",boot=1i,seq=7i,q="s" {(T0 + 500) * NS}'
"""A lone surrogate cannot be encoded as UTF-8: the writer raises UnicodeEncodeError on the batch holding it."""


async def test_an_unwritable_line_is_dead_lettered_and_its_batch_written_v1(
    mosquitto: Proc, influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    cfg = parse_config(
        {
            "mqtt": {"url": f"mqtt://{mosquitto.host}:{mosquitto.port}", "prefix": f"u{short_id()}",
                     "client_id": f"gw-{short_id()}", "clean_session": True},
            "influx": {"target": "v1", "url": influxdb_v1.url, "database": influx_db, "flush_interval_ms": 50},
            "state": {"dir": str(tmp_path / "state")},
        },
        env={},
    )  # fmt: skip
    lines = [*honest("d1", 20), BAD, *honest("d2", 20)]
    async with running_gateway(cfg) as gw:
        await gw.sink.add(lines)
        await wait_for(lambda: gw.sink.pending == 0, "the batch done")
        stats = gw.snapshot_stats()["sink"]
        metrics = gw.metrics.render().decode()

    stored = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading")
    assert sorted((r["device"], r["seq"]) for r in stored) == sorted(
        [("d1", i) for i in range(20)] + [("d2", i) for i in range(20)]
    )
    (d,) = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter", epoch="ms")
    assert (d["reason"], d["site"], d["device"]) == ("unwritable", "s", "d9")
    assert d["detail"].startswith("UnicodeEncodeError") and d["time"] == T0 + 500
    assert "\\ud800" in d["payload"] and "seq=7i" in d["payload"]

    assert isinstance(stats, dict)
    assert (stats["points_unwritable"], stats["points_refused"], stats["dead_letters_written"]) == (1, 0, 1)
    assert "edgekit_points_unwritable_total 1.0" in metrics
    assert 'edgekit_dead_letters_total{reason="unwritable"} 1.0' in metrics


async def test_an_unwritable_line_is_dead_lettered_and_its_batch_written_v2(
    victoria_metrics: Proc, tmp_path: Path
) -> None:
    site = f"site-{short_id()}"
    cfg = InfluxConfig(
        target="v2", url=victoria_metrics.url, org="o", bucket="b", token="t", flush_interval_ms=20, retry_max_s=0.5
    )
    lines = [*honest("d1", 20, site), BAD.replace("site=s", f"site={site}"), *honest("d2", 20, site)]
    sink = await run_sink(cfg, tmp_path, lines)

    def seqs() -> list[tuple[str, int]]:
        found = vm_export(victoria_metrics.url, f'{{__name__="reading_seq",site="{site}"}}')
        return sorted((x["metric"]["device"], int(v)) for x in found for v in x["values"])

    assert poll(seqs, until=lambda got: len(got) >= 40) == sorted(
        [("d1", i) for i in range(20)] + [("d2", i) for i in range(20)]
    )

    def dead() -> list[dict[str, object]]:
        return vm_export(victoria_metrics.url, f'{{__name__="dead_letter_size",site="{site}"}}')

    (d,) = poll(dead)
    assert d["metric"] == {"__name__": "dead_letter_size", "reason": "unwritable", "site": site, "device": "d9"}
    assert d["timestamps"] == [T0 + 500]
    s = sink.stats
    assert (s.points_written, s.points_unwritable, s.dead_letters_written, s.dead_letters_lost) == (40, 1, 1, 0)


async def test_a_writer_that_fails_on_everything_keeps_the_lines(tmp_path: Path, influxdb_v1: Proc) -> None:
    """An unexpected error that is not the line's (here the writer's session is closed under it) fails the dead
    letter of the first line as well: the sink keeps every line and tries again, it dead-letters nothing."""
    cfg = v1(influxdb_v1.url, f"never_{short_id()}")
    store = StateStore(tmp_path / "state.db")
    writer = make_writer(cfg)
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    await sink.start()
    await writer.close()  # every write now raises (not a SinkError)
    try:
        await sink.add(honest("d1", 10))
        await wait_for(lambda: not sink.healthy, "the sink finds the writer broken")
        await asyncio.sleep(0.3)
        assert sink.pending == 10
        assert (sink.stats.points_unwritable, sink.stats.dead_letters_written, sink.stats.points_written) == (0, 0, 0)
    finally:
        await sink.close()
        store.close()


# ------------------------------------------------------------------------ a checkpoint during the isolation


class PausingWriter:
    """The real v1 writer, held before its ``pause_at``-th request until ``go`` is set."""

    def __init__(self, cfg: InfluxConfig, pause_at: int) -> None:
        self.inner = make_writer(cfg)
        self.requests = 0
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self.go = asyncio.Event()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, lines: list[str]) -> None:
        self.requests += 1
        if self.requests == self.pause_at:
            self.paused.set()
            await self.go.wait()
        await self.inner.write(lines)


async def test_a_checkpoint_during_the_isolation_spools_only_what_is_left(
    influxdb_v1: Proc, influx_db: str, tmp_path: Path
) -> None:
    """A checkpoint while a batch is being cut up takes only its lines not yet written nor dead-lettered; the
    write in progress then does not count, the spool's copy does: every line is counted once."""
    influx_write(influxdb_v1.url, influx_db, f"reading,device=old,site=s level=1i {T0 * NS}")
    lines = [*honest("d1", 30), f"reading,device=d2,site=s level=2.5 {T0 * NS}", *honest("d3", 10)]
    cfg = v1(influxdb_v1.url, influx_db)
    writer = PausingWriter(cfg, pause_at=3)  # 1: the batch (refused), 2: its first half (written), 3: the second
    store = StateStore(tmp_path / "state.db")
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    await sink.add(lines)
    await sink.start()
    try:
        await asyncio.wait_for(writer.paused.wait(), 30)
        assert sink.stats.points_written == 20 and sink.in_memory == 21
        sink.spill(lambda chunks: store.checkpoint(0, {}, 0, chunks))
        assert store.spool_lines == 21 and sink.in_memory == 0
        writer.go.set()
        await wait_for(lambda: sink.pending == 0, lambda: f"the spool written ({sink.pending} pending)")
    finally:
        await sink.close()
        store.close()
    s = sink.stats
    assert (s.points_written, s.points_refused, s.dead_letters_written) == (40, 1, 1)
    assert len(influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device =~ /d[13]/")) == 40
    (d,) = influx_query(influxdb_v1.url, influx_db, "SELECT * FROM dead_letter")
    assert d["device"] == "d2"


class FinishingWriter(PausingWriter):
    """A :class:`PausingWriter` that also says when its paused request has returned from InfluxDB."""

    def __init__(self, cfg: InfluxConfig, pause_at: int) -> None:
        super().__init__(cfg, pause_at)
        self.finished = asyncio.Event()

    async def write(self, lines: list[str]) -> None:
        try:
            await super().write(lines)
        finally:
            if self.requests == self.pause_at:
                self.finished.set()


@pytest.mark.parametrize("commits", [True, False])
async def test_a_write_that_returns_during_a_checkpoint_off_the_loop_is_counted_once(
    influxdb_v1: Proc, influx_db: str, tmp_path: Path, commits: bool
) -> None:
    """The checkpoint's transaction runs off the event loop (``spill_async``): a write of the batch it takes that
    returns meanwhile waits for its outcome - not counted when the spool took the lines, counted when the
    transaction failed - and lines added meanwhile stay in memory. Either way every line is counted once."""
    influx_write(influxdb_v1.url, influx_db, f"reading,device=old,site=s level=1i {T0 * NS}")
    lines = [*honest("d1", 30), f"reading,device=d2,site=s level=2.5 {T0 * NS}", *honest("d3", 10)]
    cfg = v1(influxdb_v1.url, influx_db)
    writer = FinishingWriter(cfg, pause_at=3)  # 1: the batch (refused), 2: its first half (written), 3: the second
    store = StateStore(tmp_path / "state.db")
    sink = SpoolingSink(writer, cfg, store, spool_max_bytes=10**9)
    await sink.add(lines)
    await sink.start()

    async def commit(chunks: list[tuple[int, list[str]]]) -> None:
        assert sum(len(c) for _, c in chunks) == 21
        writer.go.set()
        await asyncio.wait_for(writer.finished.wait(), 30)  # InfluxDB took the 21 lines during the transaction
        await sink.add(honest("d4", 5))  # the pipeline goes on meanwhile
        assert sink.stats.points_written == 20  # the result waits for the transaction's outcome
        if not commits:
            raise OSError("disk full")
        await store.checkpoint_async(0, {}, 0, chunks)

    try:
        await asyncio.wait_for(writer.paused.wait(), 30)
        assert sink.stats.points_written == 20 and sink.in_memory == 21
        if commits:
            await sink.spill_async(commit)
            assert store.spool_lines == 21 and sink.in_memory == 5
        else:
            with pytest.raises(OSError):
                await sink.spill_async(commit)
            assert store.spool_lines == 0
        await wait_for(lambda: sink.pending == 0, lambda: f"everything written ({sink.pending} pending)")
    finally:
        await sink.close()
        store.close()
    s = sink.stats
    assert (s.points_written, s.points_refused, s.dead_letters_written) == (45, 1, 1)
    assert len(influx_query(influxdb_v1.url, influx_db, "SELECT * FROM reading WHERE device =~ /d[134]/")) == 45

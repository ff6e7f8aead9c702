"""Patterns honour ``engine.watermark.mode``: in ``global`` mode every key's watermark is the one global watermark
(max over devices of max t - bound), as the engine's windows use; flushed markers carry nothing there."""

from __future__ import annotations

from gateway.cep import Cep, CepSpec, Pattern
from gateway.engine import parse_engine
from gateway.model import Batch, Reading

T0 = 1_764_072_000_000
NOW = T0 + 86_400_000
HOT = Pattern.begin("hot").where("temp_c > 80").build("hot")


def cep(mode: str, key: str = "device") -> Cep:
    engine = parse_engine({"engine": {"watermark": {"mode": mode, "out_of_orderness": "5s"}}})
    p = Pattern.begin("hot").where("temp_c > 80").build("hot", key=key)
    return Cep(CepSpec((p,), engine))


def batch(device: str, seq: int, t: int, temp: float, flushed: int | None = None) -> Batch:
    return Batch("s", device, "t", NOW, (Reading("s", device, 1, seq, t, "s", {"temp_c": temp}),), (), flushed)


def test_global_mode_releases_one_device_on_another_devices_time() -> None:
    c = cep("global")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW) == []
    # b's time moves the one watermark past a's hot reading: a's match is due now
    got = c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    assert [m.readings for m in got] == [(("a", 1, 0),)]
    # and a's reading older than the global watermark is late, as the engine's windows count it
    assert c.process_batch(batch("a", 1, T0 + 50_000, 95.0), NOW) == []
    assert c.stats["late"] == 1


def test_device_mode_keeps_per_device_watermarks() -> None:
    c = cep("device")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW) == []
    assert c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW) == []
    assert c.process_batch(batch("a", 1, T0 + 11_000, 95.0), NOW) == []
    assert c.stats["late"] == 0


def test_global_mode_ignores_flushed_markers() -> None:
    c = cep("global")
    assert c.process_batch(batch("a", 0, T0 + 10_000, 90.0, flushed=T0 + 10_000), NOW) == []
    d = cep("device")
    assert len(d.process_batch(batch("a", 0, T0 + 10_000, 90.0, flushed=T0 + 10_000), NOW)) == 1


def test_global_mode_site_keys_use_the_global_watermark() -> None:
    c = cep("global", key="site")
    c.process_batch(batch("a", 0, T0 + 10_000, 90.0), NOW)
    # b is the only active device with a later time; in device mode the fleet minimum (a's) would hold it
    got = c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    assert [m.readings for m in got] == [(("a", 1, 0),)]


def test_global_watermark_survives_a_snapshot() -> None:
    c = cep("global")
    c.process_batch(batch("b", 0, T0 + 100_000, 20.0), NOW)
    r = cep("global")
    r.restore(c.snapshot())
    r.process_batch(batch("a", 0, T0 + 50_000, 95.0), NOW)
    assert r.stats["late"] == 1

"""A site key's partial matches are shared fairly by its devices: a flooding device evicts its own."""

from __future__ import annotations

from cep_helpers import NOW, SITE, T0, make_cep

from gateway.cep import Cep, Match, Pattern
from gateway.model import Batch, Reading


def send(cep: Cep, device: str, seq: int, t: int, x: float) -> list[Match]:
    return cep.process_batch(Batch(SITE, device, "t", NOW, (Reading(SITE, device, 1, seq, t, "s", {"x": x}),), ()), NOW)


def test_a_flooding_device_cannot_evict_another_devices_partial_match() -> None:
    rise = Pattern.begin("a").where("x >= 0").followed_by("b").where("x < 0").build("rise", key="site")
    cep = make_cep([rise], max_runs=50)
    send(cep, "honest", 0, T0, 5.0)  # starts a partial match of the site
    for i in range(500):  # another device of the site starts 500 more that never finish
        send(cep, "flood", i, T0 + 1 + i, 1.0)
    got = send(cep, "honest", 1, T0 + 1_000, -1.0)
    got += cep.flush_key(f"s:{SITE}", T0 + 100_000)
    assert [m.readings for m in got] == [(("honest", 1, 0), ("honest", 1, 1))]  # its own run, kept
    assert cep.stats["evicted"] == 500 + 1 - 50


def test_in_a_site_key_the_top_device_loses_its_own_oldest() -> None:
    never = Pattern.begin("a").where("x >= 0").followed_by("b").where("x < -100").build("never", key="site")
    cep = make_cep([never], max_runs=6)
    for i in range(3):
        send(cep, "a", i, T0 + i, 1.0)
    for i in range(3):
        send(cep, "b", i, T0 + 10 + i, 1.0)
    for i in range(4):  # c takes one from a, one from b, then all three have two: c evicts its own oldest
        send(cep, "c", i, T0 + 20 + i, 1.0)
    cep.flush_key(f"s:{SITE}", T0 + 1_000)
    runs = [r.start[1:] for r in cep.keys[f"s:{SITE}"].runs[0]]
    assert runs == [("a", 1, 1), ("a", 1, 2), ("b", 1, 1), ("b", 1, 2), ("c", 1, 2), ("c", 1, 3)]
    assert cep.stats["evicted"] == 4

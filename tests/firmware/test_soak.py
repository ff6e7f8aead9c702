"""The fleet soak in small (sim/board/soak.py ci_plan; the full size is bench/soak_fleet.py): 3 boards for a
day of virtual time under the real firmware, through a real Mosquitto and the real gateway into a real
InfluxDB 1.x, with a half-open broker, NTP blocked, a lying NTP server (a day ahead at power-on, later +20 s
now and then, malformed replies), a broker outage, a brown-out that clears the RTC, a watchdog reset, two
power losses (one in a publishing wake), a low battery and a buffer too small for the outage.

The account is exact and comes from the simulated world, not from the firmware: every measurement the world
made (its own counter rides in each reading's light_mv) is in InfluxDB exactly once with its values and an
event time within the documented bound, or was in RTC memory when the power went, or was cut before it was
stored, or is still buffered at the end, or is one of the readings the board counted as dropped. Counts, not
times: nothing here is measured against a clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from services import Proc

from sim.board.soak import Soak, ci_plan, report

from .conftest import Broker

pytestmark = pytest.mark.integration


def test_fleet_soak_accounts_for_every_reading(
    micropython: str, broker: Broker, tmp_path: Path, influxdb_v1: Proc, influx_db: str
) -> None:
    plan = ci_plan()
    soak = Soak(tmp_path / "soak", plan, broker, influxdb_v1.url, influx_db)
    res = soak.run()
    print("\n" + report(res))
    assert not res.violations, "\n".join(res.violations)

    boards = {a.name: a for a in res.boards}
    assert len(boards) == plan.boards
    for a in res.boards:
        # every reading not delivered is one the board counted; so are those whose every copy reached the broker
        # on a half-open connection (the PUBACK lost) and that its overflow policy dropped before a re-send
        assert a.dropped + a.arrived_unacked == a.reported_dropped, a.name
        assert not a.duplicated and not a.phantom and not a.wrong_value, a.name
        assert a.outcomes["watchdog"] == a.outcomes["crash"] == 0, a.name
        assert a.buffered <= 3, a.name  # the backlog went out in the fault-free hours at the end (K = 3)
    # every fault happened, and left its trace in the account
    assert res.proxy["stalled"] >= 1 and res.proxy["refused"] >= 1  # half-open, broker outage
    assert res.ntp["lies_told"] >= 1 and res.ntp["gateway_time_replies"] >= 1
    sk1, sk2, sk3 = (boards[f"sk-0{i}"] for i in (1, 2, 3))
    assert sk1.injected == {"power loss": 1} and sk1.destroyed >= 1  # its ring, in the broker outage
    assert sk1.dropped >= 1 and sk1.reported_dropped - sk1.reported_untimed >= 1  # its small buffer overflowed
    assert sk1.arrived_unacked >= 1  # in the half-open hours, before the overflow
    assert sk2.injected == {"brownout reset (RTC cleared)": 1, "power loss": 1}
    assert sk3.injected == {"wdt reset": 1}
    assert sum(a.boots.total() for a in res.boards) == 3 + 4  # one power-on each, one boot per reset or cut
    assert res.dead_letters == {} and res.gateway["dead_letters"] == 0
    assert res.rows == sum(a.arrived for a in res.boards) == res.gateway["readings_accepted"]

"""Notifications (gateway/notify.py): the routing logic with a hand-driven clock, the configuration (URLs are
secrets), and delivery through Apprise to a real local HTTP receiver that is down for a while."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from services import free_port

from gateway.alerts import Alert, Severity
from gateway.config import parse_config, secret_values
from gateway.errors import ConfigError
from gateway.notify import INBOX_MAX, Notifier, NotifySpec, Router

URL = "json://127.0.0.1:9/hook"


def alert(
    name: str = "hot",
    key: str = "d1",
    seq: int = 1,
    severity: Severity = "warning",
    site: str = "s1",
    source: str = "pattern",
    path: str = "",
    verdict: str = "",
    refers: str = "",
) -> Alert:
    return Alert(source, name, site, key, severity, seq * 1000, seq * 1000, ((key, 1, seq),), f"{name} on {key}",
                 path=path, verdict=verdict, refers=refers)  # type: ignore[arg-type]  # fmt: skip


def spec(**kw: Any) -> NotifySpec:
    base: dict[str, Any] = {"name": "t", "url": URL, "group_wait_s": 1.0, "resolve_after_s": 10.0,
                            "repeat_after_s": 0.0}  # fmt: skip
    return NotifySpec(**{**base, **kw})


# --------------------------------------------------------------------------------------------- the logic


def test_a_burst_is_one_message_repeats_are_quiet_and_a_quiet_incident_resolves() -> None:
    r = Router(spec())
    for seq in range(1, 21):  # 20 readings of one fault: 20 alerts of one incident
        r.offer(alert(seq=seq), now_ms=seq * 10)
    r.offer(alert(key="d2"), now_ms=300)  # another device within the group wait
    assert r.due(1009) == []  # the group waits 1 s from its first alert
    (msg,) = r.due(1010)
    assert msg.kind == "alert" and "2 alerts" in msg.title and "d1" in msg.body and "d2" in msg.body
    assert r.suppressed == 19
    r.offer(alert(seq=30), now_ms=5_000)  # still open: quiet
    assert r.due(5_000) == [] and r.due(10_299) == []
    (d2,) = r.due(10_300)  # d2 had no alert for 10 s
    assert d2.kind == "resolved" and "d2" in d2.title
    assert r.due(14_999) == []
    (d1,) = r.due(15_000)
    assert d1.kind == "resolved" and "d1" in d1.title and "22" not in d1.body and "21 alert(s)" in d1.body
    assert r.open == {} and r.due(100_000) == []
    r.offer(alert(seq=99), now_ms=100_000)  # a new fault after the resolution opens a new incident
    (again,) = r.due(101_000)
    assert again.kind == "alert" and again.title.startswith("[edgekit] WARNING pattern hot at s1/d1")


def test_reminder_while_open_at_most_every_repeat_after() -> None:
    r = Router(spec(group_wait_s=0, repeat_after_s=5.0, resolve_after_s=60.0))
    r.offer(alert(seq=1), 0)
    assert [m.kind for m in r.due(0)] == ["alert"]
    r.offer(alert(seq=2), 1_000)
    assert r.due(4_999) == []
    (rem,) = r.due(5_000)
    assert rem.kind == "repeat" and "1 more alert" in rem.body
    assert r.due(20_000) == []  # nothing new since the reminder: no further one


def test_no_resolved_message_when_turned_off() -> None:
    r = Router(spec(group_wait_s=0, send_resolved=False))
    r.offer(alert(), 0)
    assert len(r.due(0)) == 1
    assert r.due(60_000) == [] and r.open == {}


def test_a_fast_alert_retracted_before_it_was_sent_is_never_sent() -> None:
    r = Router(spec(group_wait_s=2.0))
    fast = alert(path="arrival")
    r.offer(fast, 0)
    r.offer(alert(path="arrival", verdict="retracted", refers=fast.id), 500)
    assert r.due(2_000) == [] and r.due(60_000) == []
    assert r.retracted_unsent == 1


def test_a_fast_alert_retracted_after_it_was_sent_is_taken_back() -> None:
    r = Router(spec(group_wait_s=0))
    fast = alert(path="arrival")
    r.offer(fast, 0)
    assert [m.kind for m in r.due(0)] == ["alert"]
    r.offer(alert(path="arrival", verdict="retracted", refers=fast.id), 3_000)
    (m,) = r.due(3_000)
    assert m.kind == "retracted" and fast.id in m.body and m.notify_type == "success"
    assert r.open == {} and r.due(60_000) == []  # no resolved message after the retraction


def test_a_confirmed_fast_alert_is_one_incident_and_a_retraction_cannot_undo_it() -> None:
    r = Router(spec(group_wait_s=0))
    fast = alert(path="arrival")
    r.offer(fast, 0)
    r.due(0)
    r.offer(alert(path="event_time", verdict="confirmed", refers=fast.id), 1_000)
    other = alert(seq=2, path="arrival")
    r.offer(other, 1_500)
    r.offer(alert(seq=2, path="arrival", verdict="retracted", refers=other.id), 2_000)
    assert r.due(2_000) == [] and r.suppressed == 2
    assert [m.kind for m in r.due(12_000)] == ["resolved"]


SEVERITIES: list[Severity] = ["info", "warning", "critical"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["pattern", "anomaly"]), max_size=2, unique=True),
    st.lists(st.sampled_from(["hot*", "door_left_open", "z.*", "?ot"]), max_size=2),
    st.sampled_from(SEVERITIES),
    st.lists(st.sampled_from(["s1", "s*", "north"]), max_size=2),
    st.lists(st.sampled_from(["d1", "d?", "pump-*"]), max_size=2),
    st.sampled_from(["pattern", "anomaly"]),
    st.sampled_from(["hot", "hotter", "door_left_open", "z.temp_c"]),
    st.sampled_from(SEVERITIES),
    st.sampled_from(["s1", "s2", "north"]),
    st.sampled_from(["d1", "d22", "pump-3"]),
)
def test_the_filter_is_each_condition_and_the_next(
    sources: list[str], names: list[str], min_sev: Severity, sites: list[str], devices: list[str],
    source: str, name: str, sev: Severity, site: str, device: str,
) -> None:  # fmt: skip
    s = spec(sources=tuple(sources), names=tuple(names), min_severity=min_sev, sites=tuple(sites),
             devices=tuple(devices))  # fmt: skip
    a = alert(name=name, key=device, severity=sev, site=site, source=source)

    def ok(pats: list[str], v: str) -> bool:
        return not pats or any(fnmatch.fnmatchcase(v, p) for p in pats)

    want = (
        (not sources or source in sources)
        and SEVERITIES.index(sev) >= SEVERITIES.index(min_sev)
        and ok(names, name)
        and ok(sites, site)
        and ok(devices, device)
    )
    r = Router(s)
    r.offer(a, 0)
    assert (len(r.due(2_000)) == 1) == want


# --------------------------------------------------------------------------------------------- configuration

SECRET_TOPIC = "edgekit-Zk9madeUpTopic"


def test_the_url_comes_from_the_environment_or_a_file_never_from_the_config_file(tmp_path: Path) -> None:
    doc = {"notify": [{"name": "phone", "min_severity": "critical", "names": "overheat*"}]}
    cfg = parse_config(doc, env={"EDGEKIT_NOTIFY_PHONE_URL": f"ntfy://ntfy.sh/{SECRET_TOPIC}"})
    (n,) = cfg.notify
    assert n.url == f"ntfy://ntfy.sh/{SECRET_TOPIC}" and n.names == ("overheat*",) and n.min_severity == "critical"
    assert SECRET_TOPIC not in repr(cfg)
    assert SECRET_TOPIC in secret_values(cfg) and f"ntfy://ntfy.sh/{SECRET_TOPIC}" in secret_values(cfg)
    f = tmp_path / "mail.url"
    f.write_text(f"mailto://gw:{SECRET_TOPIC}@127.0.0.1:2525?from=gw@example.com&mode=insecure\n")
    cfg = parse_config({"notify": [{"name": "mail", "url_file": str(f)}]}, env={})
    assert cfg.notify[0].url.startswith("mailto://") and SECRET_TOPIC in secret_values(cfg)
    with pytest.raises(ConfigError, match="not read from the config file; set EDGEKIT_NOTIFY_PHONE_URL") as e:
        parse_config({"notify": [{"name": "phone", "url": f"ntfy://ntfy.sh/{SECRET_TOPIC}"}]}, env={})
    assert SECRET_TOPIC not in str(e.value)


@pytest.mark.parametrize(
    ("table", "env", "match"),
    [
        ({"name": "phone"}, {}, "no URL; set EDGEKIT_NOTIFY_PHONE_URL"),
        ({"name": "phone"}, {"EDGEKIT_NOTIFY_PHONE_URL": f"nosuch://{SECRET_TOPIC}"}, "Apprise does not take"),
        ({"name": "phone"}, {"EDGEKIT_NOTIFY_PHONE_URL": f"{SECRET_TOPIC} x"}, "space or a second line"),
        ({"name": "p", "min_severity": "fatal"}, {"EDGEKIT_NOTIFY_P_URL": URL}, "min_severity: 'fatal'"),
        ({"name": "p", "sources": ["window"]}, {"EDGEKIT_NOTIFY_P_URL": URL}, "'window' is not one of"),
        ({"name": "p", "rate_limit": 0}, {"EDGEKIT_NOTIFY_P_URL": URL}, "rate_limit: expected an integer >= 1"),
        ({"name": "p", "colour": "red"}, {"EDGEKIT_NOTIFY_P_URL": URL}, "unknown key"),
    ],
)
def test_bad_targets_are_refused_without_showing_a_url(table: dict[str, Any], env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        parse_config({"notify": [table]}, env=env)
    assert SECRET_TOPIC not in str(e.value)


# --------------------------------------------------------------------------------------------- delivery


class Receiver:
    """A webhook receiver (Apprise's json://) on a fixed port that can be down and come back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None
        self.respond_after_s = 0.0  # a slow receiver: it has the message that long before the sender hears back

    def up(self) -> None:
        got = self.got
        respond_after_s = self.respond_after_s

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                time.sleep(respond_after_s)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.down()


async def test_a_receiver_down_for_a_while_gets_the_alert_when_it_returns(receiver: Receiver) -> None:
    clock = [0]
    s = spec(url=f"json://127.0.0.1:{receiver.port}/hook", group_wait_s=0, retry_min_s=0.05, retry_max_s=0.2,
             resolve_after_s=3600)  # fmt: skip
    n = Notifier([s], lambda: clock[0], tick_s=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(n.run(stop))
    try:
        first = alert(seq=1, severity="critical")
        n.offer([first, *(alert(seq=i) for i in range(2, 50))])  # one incident
        t = n.targets[0]
        async with asyncio.timeout(20):
            while t.stats.failures < 3:  # the receiver is down: failed, retried with backoff
                clock[0] += 50
                await asyncio.sleep(0.02)
        assert receiver.got == [] and t.stats.sent == 0 and len(t.pending) == 1
        receiver.respond_after_s = 0.3  # it comes back slow
        receiver.up()
        async with asyncio.timeout(20):  # the receiver has it before the sender's request returns and counts it
            while not receiver.got or t.stats.sent < 1:
                clock[0] += 50
                await asyncio.sleep(0.02)
        (doc,) = receiver.got
        assert doc["type"] == "failure" and first.id in doc["message"] and "CRITICAL pattern hot" in doc["title"]
        assert n.stats()["targets"]["t"]["sent"] == 1  # type: ignore[index]
        assert n.stats()["targets"]["t"]["suppressed"] == 48  # type: ignore[index]
    finally:
        stop.set()
        await task


def test_a_full_inbox_is_counted_never_waited_for() -> None:
    n = Notifier([spec()], lambda: 0)
    n.offer(alert(seq=i) for i in range(INBOX_MAX + 25))
    assert len(n.inbox) == INBOX_MAX and n.shed == 25 and n.offered == INBOX_MAX


async def test_over_the_rate_limit_what_waits_goes_out_as_one(receiver: Receiver) -> None:
    receiver.up()
    clock = [0]
    s = spec(url=f"json://127.0.0.1:{receiver.port}/hook", group_wait_s=0, rate_limit=2, rate_period_s=60,
             resolve_after_s=3600)  # fmt: skip
    n = Notifier([s], lambda: clock[0], tick_s=0.02)
    stop = asyncio.Event()
    task = asyncio.create_task(n.run(stop))
    try:
        for i in range(5):  # five devices, five incidents, one after the other
            n.offer([alert(key=f"d{i}")])
            await asyncio.sleep(0.3)
        assert len(receiver.got) == 2  # the limit
        clock[0] += 60_000
        async with asyncio.timeout(10):
            while len(receiver.got) < 3:
                await asyncio.sleep(0.02)
        assert "3 notifications" in receiver.got[2]["title"]
        assert all(f"s1/d{i}" in receiver.got[2]["message"] for i in (2, 3, 4))
        async with asyncio.timeout(10):  # the receiver has it before the sender's request returns and counts it
            while n.targets[0].stats.sent < 3:
                await asyncio.sleep(0.02)
        assert n.targets[0].stats.combined == 2
    finally:
        stop.set()
        await task


async def test_no_log_line_shows_a_secret_of_the_url(receiver: Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    """Failed deliveries with Apprise logging at DEBUG: its lines and ours name the target, never the URL's
    secrets (the password, the token in the path and the query)."""
    from gateway.logs import setup_logging

    pw, token, key = "pw-Zk9madeUpSecret", "tok-Zk9madeUpPath", "key-Zk9madeUpQuery"
    url = f"json://gw:{pw}@127.0.0.1:{receiver.port}/{token}?-X-Api-Key={key}"  # the receiver is down
    cfg = parse_config({"notify": [{"name": "hook", "group_wait_s": 0, "retry_min_s": 0.05}]},
                       env={"EDGEKIT_NOTIFY_HOOK_URL": url})  # fmt: skip
    setup_logging("DEBUG", "json", secret_values(cfg))
    try:
        clock = [0]
        n = Notifier(cfg.notify, lambda: clock[0], tick_s=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(n.run(stop))
        n.offer([alert()])
        async with asyncio.timeout(20):
            while n.targets[0].stats.failures < 2:
                clock[0] += 100
                await asyncio.sleep(0.02)
        stop.set()
        await task
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert '"event": "notify_failed"' in err and '"target": "hook"' in err and "apprise" in err.lower()
    for secret in (pw, token, key, url, "Zk9madeUp"):
        assert secret not in err, secret


def test_top_shows_each_target() -> None:
    from gateway.top import render

    targets = {"phone": {"sent": 3, "pending": 1, "failures": 2, "dropped": {"expired": 1}},
               "mail": {"sent": 2, "pending": 0, "failures": 0, "dropped": {}}}  # fmt: skip
    frame = render({"notify": {"shed": 4, "targets": targets}, "live": {"now_ms": 1}}, None)
    assert "notify: phone sent 3 pending 1 failures 2 dropped 1; mail sent 2; shed 4 (inbox full)" in frame
    assert not any(ln.startswith("notify") for ln in render({"live": {"now_ms": 1}}, None))


def test_the_notifier_tells_fast_alerts_apart_only_when_they_can_be_retracted() -> None:
    clock = [0]
    fast = alert(path="arrival")
    retraction = alert(path="arrival", verdict="retracted", refers=fast.id)
    n = Notifier([spec(group_wait_s=1.0)], lambda: clock[0])  # a rule has on = "both"
    n.offer([fast, retraction])
    n.step()
    clock[0] = 1_000
    n.step()
    assert len(n.targets[0].pending) == 0 and n.targets[0].router.retracted_unsent == 1
    n = Notifier([spec(group_wait_s=1.0)], lambda: clock[0], retractions=False)  # none has: ids not hashed
    clock[0] = 0
    n.offer([fast])
    n.step()
    clock[0] = 1_000
    n.step()
    assert [m.alert_ids for m in n.targets[0].pending] == [(fast.id,)]

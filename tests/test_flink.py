"""The compiled Flink SQL job on a real standalone Flink cluster, against the gateway's own output.

One cluster for the whole file (a JobManager and two TaskManagers from the apache-flink wheels, separate
processes on loopback, scripts/setup.sh installs them): each scenario is simulated, run through the gateway's
pipeline in the global watermark mode, and the readings it accepted are written in the bridge's JSON
(docs/scale-out.md); the compiled job reads them, and its window results and late records must equal the
gateway's, but for the differences docs/scale-out.md lists as rules (each pinned by a test here).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.alerts import Alert
from gateway.bridge import message_records, watermark_top
from gateway.config import Config, parse_config
from gateway.engine import LateReading, WindowResult
from gateway.flinksql import FlinkRefused, SinkPaths, compile_flink_sql, refusals
from gateway.pipeline import Pipeline
from sim.commands import prepare
from sim.inprocess import gateway_config
from sim.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from flink_cluster import Cluster, FlinkMissing, start_cluster  # noqa: E402  (scripts/flink_cluster.py)

EXACT = ("count", "min", "max", "first", "last")
"""Aggregates that must be equal to the bit; the others within ROUNDING (rule R)."""
ROUNDING = {"sum": 1e-9, "mean": 1e-9, "stddev": 1e-6}


# --- the cluster ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def flink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A standalone Flink cluster on loopback: one JobManager and two TaskManagers (seven slots each), separate
    processes, checkpoints in a local directory (scripts/flink_cluster.py)."""
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("flink"), slots=7)  # the nine jobs need 14 slots
    except FlinkMissing as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.close()


# --- the gateway's side -----------------------------------------------------------------------------------


@dataclass
class GatewaySide:
    config: Config
    lines: list[str]
    windows: list[dict[str, Any]]
    late: list[dict[str, Any]]
    final_watermark: int
    alerts: list[Alert] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    """Lines per message, in order (a file of the bridge holds whole messages)."""


def _late_doc(o: LateReading) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "window": o.window,
        "site": o.site,
        "device": o.device,
        "metric": o.metric,
        "t_ms": o.t_ms,
        "boot": o.boot,
        "seq": o.seq,
        "late_by_ms": o.late_by_ms,
        "reason": o.reason,
    }
    if o.watermark_ms is not None:
        doc["watermark_ms"] = o.watermark_ms
    if o.value is not None:
        doc["value"] = float(o.value)
    return doc


def gateway_side(
    name: str,
    windows: list[dict[str, Any]] | None = None,
    patterns: list[dict[str, Any]] | None = None,
    bound: str | None = None,
) -> GatewaySide:
    """Simulate the scenario, run it through the gateway's pipeline in the global watermark mode; what the
    gateway emitted and the bridge's input lines for the job."""
    scenario = load_scenario(name)
    gw = dict(scenario.gateway)
    if windows is not None:
        gw["windows"] = windows
    if patterns is not None:
        gw["patterns"] = patterns
    engine = dict(gw.get("engine", {}))
    engine["watermark"] = {**engine.get("watermark", {}), "mode": "global"}
    if bound is not None:
        engine["watermark"]["out_of_orderness"] = bound
    gw["engine"] = engine
    prep = prepare(scenario, gw, now_ms=lambda: 1_764_072_000_000)
    return run_gateway(gateway_config(gw, scenario.prefix), prep.run.deliveries)


def run_gateway(cfg: Config, deliveries: Sequence[Any]) -> GatewaySide:
    """The deliveries (``topic``, ``payload``, ``arrival_ms``) through the gateway's pipeline, ticking every second;
    what the gateway emitted and the bridge's input lines for the job."""
    pipeline = Pipeline(cfg)
    lines: list[str] = []
    results: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    alerts: list[Alert] = []
    sizes: list[int] = []
    pos = 1
    top: int | None = None  # the bridge's FileForwarder.top
    wm = -(2**62)
    bound = cfg.engine.watermark.out_of_orderness_ms
    next_tick = deliveries[0].arrival_ms + 1_000 if deliveries else 0

    def collect(outputs: list[Any]) -> None:
        for o in outputs:
            if isinstance(o, WindowResult):
                doc = json.loads(o.to_payload())
                doc.pop("emitted_ms", None)
                results.append(doc)
            elif isinstance(o, LateReading):
                late.append(_late_doc(o))

    for d in deliveries:
        while next_tick <= d.arrival_ms:
            ticked = pipeline.tick(next_tick)
            collect(ticked.outputs)
            alerts += ticked.alerts
            next_tick += 1_000
        if cfg.engine.windows:  # wm0_ms is the engine's watermark before the message, plus the bound
            before = pipeline.engine.device_watermark("")
            assert before == (None if top is None else top - bound), (before, top)
        out = pipeline.handle(d.topic, d.payload, d.arrival_ms)
        collect(out.outputs)
        alerts += out.alerts
        if out.readings:
            eng = cfg.engine
            limits = {"min_time_ms": eng.min_time_ms, "max_future_ms": eng.max_future_ms}
            recs = message_records(out.readings, pos, d.arrival_ms, wm0_ms=top, **limits)
            lines += [rec.decode().rstrip("\n") for rec in recs]
            sizes.append(len(recs))
            pos += 1
            mt = watermark_top(out.readings, d.arrival_ms, **limits)
            top = top if mt is None or (top is not None and top >= mt) else mt
            wm = max([wm] + [r.t_ms - bound for r in out.readings if r.quality != "u"])
    return GatewaySide(cfg, lines, results, late, wm, alerts, sizes)


# --- the job's side ---------------------------------------------------------------------------------------


def _read_dir(path: Path) -> list[dict[str, Any]]:
    """Every record of the committed part files (a name starting with '.' is in progress)."""
    out: list[dict[str, Any]] = []
    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.name.startswith("."):
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


@dataclass
class JobSide:
    windows: list[dict[str, Any]]
    late: list[dict[str, Any]]
    script: str
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _paths(base: Path) -> SinkPaths:
    """A monitoring job's directories under ``base``: its input in ``in``, its results beside it."""
    return SinkPaths(
        readings=f"file://{base / 'in'}",
        windows=f"file://{base / 'windows'}",
        late=f"file://{base / 'late'}",
        alerts=f"file://{base / 'alerts'}",
        monitor_interval="1s",
    )


def streaming_job_sides(
    cluster: Cluster, work: Path, runs: dict[str, tuple[GatewaySide, int]], fed: Sequence[FileFeed] = ()
) -> dict[str, JobSide]:
    """Jobs that monitor their directories, one per run (label: the gateway's side and a parallelism), submitted
    together: the input appears once they run (a reader without a file is then idle, and does not hold the
    watermark back). When every reading has been read, the jobs are stopped, drained (rule E). The ``fed`` jobs
    are submitted with them (a submission's fixed costs are paid once) and left running, idle, for their tests."""
    scripts: dict[str, str] = {}
    for i, (label, (side, parallelism)) in enumerate(runs.items()):
        base = work / f"run{i}"
        (base / "in").mkdir(parents=True)
        scripts[label] = compile_flink_sql(side.config, _paths(base), parallelism=parallelism, prefix=f"s{i}_")
    (work / "jobs.sql").write_text("".join(scripts.values()) + "".join(f.script for f in fed))
    submitted = cluster.run_sql(work / "jobs.sql", wait=False)
    ids = dict(zip(runs, submitted[: len(runs)], strict=True))
    for f, jid in zip(fed, submitted[len(runs) :], strict=True):
        f.cluster, f.jid = cluster, jid
    for jid in submitted:
        cluster.wait_running(jid)
    time.sleep(3)  # well past the idle timeout: every reader is idle before any input exists
    for i, (side, _) in enumerate(runs.values()):
        hidden = work / f"run{i}" / "in" / ".readings.jsonl"  # Flink's file source skips names starting with '.'
        hidden.write_text("".join(line + "\n" for line in side.lines))
        hidden.rename(hidden.with_name(f"readings-{1:020d}.jsonl"))
    deadline = time.monotonic() + 180
    counts: dict[str, int] = {}
    while True:  # every job runs, and its source has emitted nothing new for 3 s
        try:
            for jid in ids.values():
                cluster.wait_running(jid)
            now = {label: cluster.source_records(j) for label, j in ids.items()}
            if now == counts and all(n >= len(runs[label][0].lines) for label, n in now.items()):
                break
            counts = now
        except (OSError, StopIteration, KeyError):
            pass
        assert time.monotonic() < deadline, f"the jobs did not read their input: {counts}"
        time.sleep(3)
    cluster.stop(list(ids.values()), work / "savepoints")
    return {
        label: JobSide(
            _read_dir(work / f"run{i}" / "windows"),
            _read_dir(work / f"run{i}" / "late"),
            script,
            _read_dir(work / f"run{i}" / "alerts") if (work / f"run{i}" / "alerts").exists() else [],
        )
        for i, (label, script) in enumerate(scripts.items())
    }


class FileFeed:
    """A job whose test places its input one file at a time: the gateway's lines in ``n`` files of whole messages,
    in the order the bridge would write them (Flink's file source takes the files that are there at once in no
    fixed order: docs/scale-out.md). ``script``: the compiled job at parallelism 2, submitted with the others
    (:func:`streaming_job_sides`); ``head``: statements before it."""

    def __init__(self, side: GatewaySide, work: Path, n: int, prefix: str, head: str = "") -> None:
        self.side, self.work, self.dir = side, work, work / "in"
        self.dir.mkdir(parents=True)
        self.script = head + compile_flink_sql(side.config, _paths(work), parallelism=2, prefix=prefix)
        self.cluster: Cluster | None = None
        self.jid = ""
        self.files: list[list[str]] = [[] for _ in range(n)]
        per_file = -(-len(side.lines) // n)
        i = 0
        for size in side.sizes:
            self.files[min(i // per_file, n - 1)] += side.lines[i : i + size]
            i += size
        assert i == len(side.lines) and all(self.files)

    @property
    def flink(self) -> Cluster:
        assert self.cluster is not None and self.jid, "not submitted"
        return self.cluster

    def output(self) -> JobSide:
        """Stop the job (drained) and read what it committed."""
        self.flink.stop([self.jid], self.work / "savepoints")
        return JobSide(_read_dir(self.work / "windows"), _read_dir(self.work / "late"), self.script)

    def place(self, k: int) -> None:
        hidden = self.dir / f".readings-{k:020d}.jsonl"  # Flink's file source skips names starting with '.'
        hidden.write_text("".join(line + "\n" for line in self.files[k]))
        hidden.rename(hidden.with_name(f"readings-{k:020d}.jsonl"))

    def records(self) -> int:
        """What the job's source has read since its (last) start."""
        try:
            return self.flink.source_records(self.jid)
        except (OSError, StopIteration, KeyError):  # metrics not there yet
            return 0

    def read_at_least(self, n: int) -> None:
        deadline = time.monotonic() + 60
        while self.records() < n:
            assert time.monotonic() < deadline, f"the job did not read {n} readings"
            time.sleep(0.1)

    def feed(self, ks: range, base: int) -> None:
        """The files ``ks`` one at a time, each once the one before is read; ``base``: what the source has read
        since its start before the first of them."""
        for k in ks:
            self.place(k)
            self.read_at_least(base + sum(map(len, self.files[ks.start : k + 1])))

    def settled(self) -> int:
        """What the source has read since its (last) start, once nothing new came for 3 s."""
        counts: list[int] = []
        deadline = time.monotonic() + 120
        while len(counts) < 4 or len(set(counts[-4:])) > 1:
            assert time.monotonic() < deadline, f"the job did not settle: {counts}"
            self.flink.wait_running(self.jid)
            counts.append(self.records())
            time.sleep(1)
        return counts[-1]


Jobs = tuple[dict[str, tuple[GatewaySide, int]], dict[str, JobSide], dict[str, FileFeed]]
"""The shared submission: the runs (label: side, parallelism), their jobs' output, the jobs fed by their tests."""
CHECKPOINTS_AN_HOUR_APART = "SET 'execution.checkpointing.interval' = '1 h';\n"


# --- comparing --------------------------------------------------------------------------------------------


def _wkey(doc: dict[str, Any]) -> tuple[Any, ...]:
    return (doc["window"], doc["site"], doc.get("device"), doc["metric"], doc["start_ms"])


def _lkey(doc: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, v) for k, v in doc.items()))


def _rkey(doc: dict[str, Any]) -> tuple[Any, ...]:
    """A result's window, key and metric."""
    return (doc["window"], doc["site"], doc.get("device"), doc["metric"])


def window_differences(
    gateway: list[dict[str, Any]], job: list[dict[str, Any]], final_wm: int, job_late: list[dict[str, Any]]
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The differences between the two sides' window results that no rule of docs/scale-out.md explains, those a
    rule explains (each saying which), and the job's late records that rule S explains. ``job_late``: the job's
    late records the gateway does not have."""
    diffs: list[str] = []
    explained: list[str] = []
    pulled_all: list[dict[str, Any]] = []
    g = {_wkey(d): d for d in gateway}
    assert len(g) == len(gateway), "the gateway emitted a window twice (no lateness: it must not)"
    j: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in job:
        if d["end_ms"] > final_wm:
            explained.append(f"rule E (end of input fires what is open): {_wkey(d)}")
            continue
        assert _wkey(d) not in j, f"the job emitted a window twice: {d}"
        j[_wkey(d)] = d
    for k in sorted(set(g) | set(j), key=repr):
        a, b = g.get(k), j.get(k)
        if a is None or b is None:
            diffs.append(f"only in {'the job' if a is None else 'the gateway'}: {a or b}")
            continue
        if a["count"] > b["count"] and a["end_ms"] == b["end_ms"]:
            # rule S: a reading whose own session had passed the watermark, inside a session still open: the
            # gateway adds it to the session, the job sends it to the late output
            pulled = [x for x in job_late if _rkey(x) == k[:4] and a["start_ms"] <= x["t_ms"] < a["end_ms"]]
            values = [x["value"] for x in pulled]
            ga, ja = a["aggregates"], b["aggregates"]
            if (
                pulled
                and a["count"] == b["count"] + len(pulled)
                and math.isclose(ga["sum"], ja["sum"] + sum(values), rel_tol=1e-9)
                and ga["max"] == max([ja["max"], *values])
                and ga["min"] == min([ja["min"], *values])
            ):
                explained.append(f"rule S (late in the job, inside a session: {len(pulled)} reading(s)): {k}")
                pulled_all += pulled
                continue
        for f in ("end_ms", "count", "result", "revision", "fired"):
            if a[f] != b[f]:
                diffs.append(f"{k} {f}: gateway {a[f]!r}, job {b[f]!r}")
        ga, ja = a["aggregates"], {n: v for n, v in b["aggregates"].items() if v is not None}
        if set(ga) != set(ja):
            diffs.append(f"{k} aggregates: gateway {sorted(ga)}, job {sorted(ja)}")
            continue
        for name, v in ga.items():
            w = ja[name]
            if v == w:
                continue
            if name not in EXACT and math.isclose(v, w, rel_tol=ROUNDING[name], abs_tol=1e-12):
                explained.append(f"rule R (rounding of {name}): {k} {v!r} {w!r}")
            else:
                diffs.append(f"{k} {name}: gateway {v!r}, job {w!r}")
    return diffs, explained, pulled_all


def late_differences(gateway: list[dict[str, Any]], job: list[dict[str, Any]]) -> list[str]:
    gs = sorted(map(_lkey, gateway))
    js = sorted(map(_lkey, job))
    only_g = [x for x in gs if x not in js]
    only_j = [x for x in js if x not in gs]
    return [f"late only in the gateway: {dict(x)}" for x in only_g] + [
        f"late only in the job: {dict(x)}" for x in only_j
    ]


# --- the tests --------------------------------------------------------------------------------------------

SCENARIOS = {
    # boards that sleep 30 minutes and flush: in the global mode most of their readings are late
    "sleepy": None,
    # losses, re-sends and duplicates; a tumbling and a session window (lateness 0: rule L)
    "flaky-network": [
        {"name": "temp_5m", "kind": "tumbling", "size": "5m", "metrics": ["temp_c"]},
        {"name": "rh_session", "kind": "session", "gap": "3m", "metrics": ["rh"]},
    ],
}


@dataclass(frozen=True)
class _Delivery:
    topic: str
    payload: bytes
    arrival_ms: int


def session_rule_side() -> GatewaySide:
    """Rule S made to happen, and what Flink's own session merging would do: device d1 reads every minute until
    minute 12 (one session); a reading of d1 from minute 5.5 arrives at minute 11, its own session long past the
    watermark but inside d1's open session (rule S: the gateway adds it, the job sends it to the late output).
    Device d2 starts at minute 7; its reading from minute 5 arrives at minute 11.5: its own session has passed,
    and it touches d2's session before its start (late in both: Flink's merging, before lateness was decided from
    wm0_ms, took it into the session). Device d3's reading from minute 2, at minute 12: late in both."""
    cfg = parse_config(
        {"engine": {"watermark": {"mode": "global", "out_of_orderness": "5s"}},
         "windows": [{"name": "x_session", "kind": "session", "gap": "3m", "metrics": ["x"]},
                     {"name": "x_2m", "kind": "tumbling", "size": "2m", "metrics": ["x"]}]},
        env={},
    )  # fmt: skip
    t0 = 1_764_072_000_000
    sends = [("d1", i, t0 + i * 60_000, t0 + i * 60_000 + 100) for i in range(1, 13)]
    sends += [("d2", 100 + i, t0 + i * 60_000 + 500, t0 + i * 60_000 + 600) for i in range(7, 21)]
    sends += [("d1", 99, t0 + 330_000, t0 + 660_200), ("d2", 99, t0 + 300_000, t0 + 690_200)]
    sends += [("d3", 1, t0 + 120_000, t0 + 720_200), ("d3", 2, t0 + 721_000, t0 + 721_100)]
    out: list[_Delivery] = []
    for dev, seq, t, arrival in sorted(sends, key=lambda x: x[3]):
        r = {"b": 1, "s": seq, "t": t, "q": "s", "m": {"x": float(seq % 7) + t % 1000 / 1000}}
        payload = json.dumps({"v": 1, "dev": dev, "r": [r]}).encode()
        out.append(_Delivery(f"edgekit/lab/{dev}/readings", payload, arrival))
    return run_gateway(cfg, out)


@pytest.fixture(scope="session")
def gateway_runs() -> dict[str, GatewaySide]:
    runs = {name: gateway_side(name, windows) for name, windows in SCENARIOS.items()}
    return runs | {"session-rule": session_rule_side()}


@pytest.fixture(scope="session")
def pattern_side() -> GatewaySide:
    """pattern-sequences with the PATTERNS below and no window, in global mode with a 60 s bound (its status and
    door readings come up to 49 s after their time: on time then, so that every pattern matches)."""
    return gateway_side("pattern-sequences", [], PATTERNS, "60s")


@pytest.fixture(scope="session")
def jobs(
    flink: Cluster,
    gateway_runs: dict[str, GatewaySide],
    pattern_side: GatewaySide,
    tmp_path_factory: pytest.TempPathFactory,
) -> Jobs:
    """Every run of the window scenarios and of the patterns at parallelism 1 and 2, and the made-up session-rule
    input at parallelism 1, submitted once together (a submission's fixed costs, the client's planning and the
    drain, are paid once); with them the two jobs of parallelism 2 whose tests feed them one file at a time,
    the sleepy scenario with every kind of window: ``kill`` and ``turns`` (checkpoints an hour apart; last, as
    that setting holds for the statements after it)."""
    runs = {f"{name} p{p}": (gateway_runs[name], p) for name in SCENARIOS for p in (1, 2)}
    runs |= {"session-rule p1": (gateway_runs["session-rule"], 1)}
    runs |= {f"patterns p{p}": (pattern_side, p) for p in (1, 2)}
    sleepy = gateway_side("sleepy", KILL_WINDOWS)
    fed = {
        "kill": FileFeed(sleepy, tmp_path_factory.mktemp("kill"), 16, "k_"),
        "turns": FileFeed(sleepy, tmp_path_factory.mktemp("turns"), 16, "t_", CHECKPOINTS_AN_HOUR_APART),
    }
    return runs, streaming_job_sides(flink, tmp_path_factory.mktemp("jobs"), runs, list(fed.values())), fed


def _check(name: str, side: GatewaySide, job: JobSide, label: str) -> list[str]:
    assert side.windows and side.late and side.lines, f"{name}: the gateway emitted nothing to compare"
    gl = Counter(map(_lkey, side.late))
    job_late = [x for x in job.late if not gl[_lkey(x)]]
    diffs, explained, pulled = window_differences(side.windows, job.windows, side.final_watermark, job_late)
    diffs += late_differences(side.late + pulled, job.late)  # the late records rule S explains are the job's
    print(f"{name}, {label}: {len(side.windows)} windows, {len(side.late)} late records equal;",
          f"{len(explained)} differences explained by a rule:", *explained[:12], sep="\n  ")  # fmt: skip
    assert not diffs, f"{name}, {label}: {len(diffs)} differences:\n" + "\n".join(diffs[:40])
    return explained


@pytest.mark.integration
def test_job_equals_gateway_at_parallelism_1_and_2(gateway_runs: dict[str, GatewaySide], jobs: Jobs) -> None:
    """Each scenario at parallelism 1 and 2, the input arriving while the jobs run: every window and late
    record equal to the gateway's, but for rules E (end of input), S (a reading inside an open session whose own
    session had passed) and R (rounding), each of which occurs."""
    runs = {label: run for label, run in jobs[0].items() if not label.startswith("patterns")}
    assert len(runs) == 5
    got = jobs[1]
    rules: dict[str, set[str]] = {}
    for label, (side, _) in runs.items():
        rules[label] = {e.split(" ", 2)[1] for e in _check(label, side, got[label], "")}
    for p in (1, 2):  # the rules are real: each occurs (R with stddev: sums of squares against Welford's M2)
        assert rules[f"flaky-network p{p}"] >= {"E"} and rules[f"sleepy p{p}"] >= {"E", "R"}, rules
        # a session the job had extended backwards by a reading the gateway found late (Flink merges sessions
        # before it decides lateness) is gone: the job decides lateness from wm0_ms, before its windows
        assert "S" not in rules[f"flaky-network p{p}"] and "S" not in rules[f"sleepy p{p}"]
    # rule S, made to happen: one of d1's sessions; d2's reading before its session and d3's are late in both
    assert rules["session-rule p1"] >= {"S", "E"}, rules["session-rule p1"]
    s_rule = [e for e in _check("session-rule", *runs["session-rule p1"][:1], got["session-rule p1"], "") if " S " in e]
    assert len(s_rule) == 1 and "'x_session', 'lab', 'd1'" in s_rule[0], s_rule
    late = {(x["window"], x["device"], x["seq"]) for x in gateway_runs["session-rule"].late}
    assert {("x_session", "d2", 99), ("x_session", "d3", 1)} <= late and ("x_session", "d1", 99) not in late


def test_compile_refuses_what_flink_sql_cannot_do() -> None:
    cfg = gateway_config(dict(load_scenario("flaky-network").gateway), "edgekit")
    with pytest.raises(FlinkRefused) as exc:
        compile_flink_sql(cfg)
    text = str(exc.value)
    assert "engine.watermark.mode" in text and 'mode = "global"' in text
    assert "windows[temp_5m].allowed_lateness" in text and "windows[rh_session].allowed_lateness" in text
    # an interval join (docs/correlation.md) is refused too, the windows being fine
    doc = {
        "engine": {"watermark": {"mode": "global"}},
        "windows": [{"name": "t", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"]}],
        "joins": [{"name": "door_then_cold", "between": "b.t BETWEEN a.t AND a.t + 2m",
                   "a": {"metrics": ["door"]}, "b": {"metrics": ["temp_c"]}}],
        "metric_types": {"string": ["door"]},
    }  # fmt: skip
    with pytest.raises(FlinkRefused) as exc:
        compile_flink_sql(parse_config(doc, env={}))
    assert [p.split(":")[0] for p in exc.value.problems] == ["joins[door_then_cold]"]
    # anomaly detection, with its rolling-window baseline too: named, with why an OVER window is not it
    doc = {
        "engine": {"watermark": {"mode": "global"}},
        "windows": [{"name": "t", "kind": "tumbling", "size": "60s", "metrics": ["temp_c"]}],
        "anomaly": {"baseline": "window", "window": "10m", "rebaseline_after": "5m"},
    }
    with pytest.raises(FlinkRefused) as exc:
        compile_flink_sql(parse_config(doc, env={}))
    assert [p.split(":")[0] for p in exc.value.problems] == ["[anomaly]"]
    assert 'baseline = "window"' in str(exc.value) and "OVER window" in str(exc.value)
    assert "keep anomaly detection on the gateway" in str(exc.value)
    # group-relative values of a window (docs/cep.md) too
    doc = {
        "engine": {"watermark": {"mode": "global"}},
        "groups": {"greenhouse": ["gh-*"]},
        "windows": [{"name": "temp_5m", "kind": "tumbling", "size": "5m", "metrics": ["temp_c"],
                     "aggregates": ["count", "mean"], "relative": {"baseline": "median"}}],
    }  # fmt: skip
    with pytest.raises(FlinkRefused) as exc:
        compile_flink_sql(parse_config(doc, env={}))
    assert [p.split(":")[0] for p in exc.value.problems] == ["windows[temp_5m].relative"]


def test_cli_compile_writes_the_job_and_refuses_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``edgekit-gateway compile --target flink-sql``: the script (files or Kafka), or exit 2 naming each setting."""
    from gateway.cli import main

    conf = tmp_path / "gateway.toml"
    conf.write_text(
        '[engine.watermark]\nmode = "global"\nout_of_orderness = "7s"\n'
        '[[windows]]\nname = "temp_1m"\nkind = "tumbling"\nsize = "60s"\nmetrics = ["temp_c"]\n'
        '[[windows]]\nname = "rh_hop"\nkind = "sliding"\nsize = "60s"\nslide = "20s"\nmetrics = ["rh"]\n'
    )
    out = tmp_path / "job.sql"
    assert main(["compile", "--target", "flink-sql", "--config", str(conf), "--output", str(out)]) == 0
    script = out.read_text()
    top = "CASE WHEN wm_ms IS NULL OR wm_ms < wm0_ms THEN wm0_ms ELSE wm_ms END"
    assert f"WATERMARK FOR ts AS TO_TIMESTAMP_LTZ({top} - 7001, 3)" in script
    assert "SELECT *, wm0_ms - 7000 AS gw_wm0 FROM readings" in script  # lateness: from wm0_ms alone
    assert "TUMBLE(TABLE w0_in, DESCRIPTOR(ts), INTERVAL '60' SECOND(9))" in script
    # the sliding window: three tumbling windows of 60 s, offset by 20 s each, on the readings on time for each
    assert "TUMBLE(TABLE w1g0_in, DESCRIPTOR(ts), INTERVAL '60' SECOND(9))" in script
    assert "TUMBLE(TABLE w1g2_in, DESCRIPTOR(ts), INTERVAL '60' SECOND(9), INTERVAL '40' SECOND(9))" in script
    assert "(t_ms - MOD(t_ms - 40000, 60000) + 60000) > gw_wm0" in script and "HOP(" not in script
    assert "'source.monitor-interval' = '10s'" in script and "table.exec.source.idle-timeout" in script
    # the Kafka variant (generated, not run: no broker here)
    assert main(["compile", "--target", "flink-sql", "--config", str(conf), "--source", "kafka"]) == 0
    kafka = capsys.readouterr().out
    assert kafka.count("'connector' = 'kafka'") == 3 and "'sink.delivery-guarantee' = 'exactly-once'" in kafka
    assert "filesystem" not in kafka
    # one-phase window aggregation whatever the source (test_the_readers_taking_turns_lose_nothing)
    assert "'table.optimizer.agg-phase-strategy' = 'ONE_PHASE'" in script and kafka.count("ONE_PHASE") == 1
    # refused: the example configuration (per-device watermarks, a quiet period, fast alerts; its patterns are a job)
    example = REPO / "gateway" / "examples" / "gateway.toml"
    assert main(["compile", "--target", "flink-sql", "--config", str(example)]) == 2
    err = capsys.readouterr().err
    assert "engine.watermark.mode" in err and "patterns[door_left_open].steps[closed]" in err
    assert "[[windows]]" not in err


# --- patterns (MATCH_RECOGNIZE) ---------------------------------------------------------------------------

PATTERNS: list[dict[str, Any]] = [
    # at_least on the last step (it completes at its minimum), within
    {"name": "failed_3x_5m", "within": "5m", "severity": "critical",
     "steps": [{"name": "failed", "where": 'status == "FAILED"', "at_least": 3}]},
    # strict next
    {"name": "door_opened", "steps": [{"name": "closed_before", "where": 'door == "closed"'},
                                      {"name": "opened", "follow": "next", "where": 'door == "open"'}]},
    # a negation in the middle, followed_by
    {"name": "open_then_closed", "within": "5m",
     "steps": [{"name": "opened", "where": 'door == "open"'},
               {"name": "no_fail", "follow": "not_followed_by", "where": 'status == "FAILED"'},
               {"name": "closed", "where": 'door == "closed"'}]},
    # times on a strict step, prev references
    {"name": "temp_rising", "within": "3m", "severity": "info",
     "steps": [{"name": "base", "where": "temp_c > -50"},
               {"name": "rise", "follow": "next", "times": 2, "where": "temp_c > prev.temp_c + 0.05"}]},
    # a site key (readings of several devices in (t, device, boot, seq) order), a step reference with a factor
    {"name": "site_warm_then_cool", "key": "site", "within": "2m",
     "steps": [{"name": "warm", "where": "temp_c >= 21.5 and temp_c in [15, 30]"},
               {"name": "cool", "where": "temp_c < 0.98 * warm.temp_c - 0.1"}]},
    # device globs, strings compared with != too
    {"name": "failed_then_door", "key": "site", "devices": ["dev-000[!4]", "dev-0005"],
     "steps": [{"name": "failed", "where": 'status == "FAILED"'},
               {"name": "door", "where": 'door == "open" and door != "closed"'}]},
]  # fmt: skip


def alert_differences(side: GatewaySide, job: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The job's alert records, as the sink-only gateway writes them (``sinkonly.alert_line``), against the
    gateway's own ``alert`` points; a job alert whose last reading the gateway's final watermark has not passed
    is rule E (end of input)."""
    from gateway.sinkonly import alert_line

    gw = Counter(a.to_line() for a in side.alerts)
    explained: list[str] = []
    mine: Counter[str] = Counter()
    for doc in job:
        if doc["last_ms"] >= side.final_watermark:
            explained.append(f"rule E (end of input): {doc['name']} {doc['readings']}")
        else:
            mine[alert_line(doc, side.config)] += 1
    diffs = [f"alert only in the gateway: {x}" for x in (gw - mine).elements()]
    diffs += [f"alert only in the job: {x}" for x in (mine - gw).elements()]
    return diffs, explained


@pytest.mark.integration
def test_patterns_equal_the_gateways_at_parallelism_1_and_2(pattern_side: GatewaySide, jobs: Jobs) -> None:
    """pattern-sequences in global mode, six patterns compiled to MATCH_RECOGNIZE in one job, at parallelism 1
    and 2 (submitted with the window scenarios' jobs): every alert of the job, written as the sink-only gateway
    writes it, equals the gateway's point, but for rule E (end of input), which occurs."""
    side = pattern_side
    names = Counter(a.name for a in side.alerts)
    assert set(names) == {p["name"] for p in PATTERNS}, f"a pattern raised no alert on the gateway: {names}"
    got = jobs[1]
    for label in ("patterns p1", "patterns p2"):
        diffs, explained = alert_differences(side, got[label].alerts)
        print(f"{label}: {len(side.alerts)} alerts equal; {len(explained)} explained:", *explained[:12], sep="\n  ")
        assert not diffs, f"{label}: {len(diffs)} differences:\n" + "\n".join(diffs[:40])
        assert explained, "rule E does not occur: the end of input left no match open"


KILL_WINDOWS: list[dict[str, Any]] = [
    {"name": "temp_10m", "kind": "tumbling", "size": "10m", "metrics": ["temp_c"]},
    {"name": "rh_sliding", "kind": "sliding", "size": "10m", "slide": "5m", "metrics": ["rh"],
     "aggregates": ["count", "mean", "max"]},
    {"name": "temp_session", "kind": "session", "gap": "3m", "metrics": ["temp_c"]},
]  # fmt: skip
"""The sleepy scenario's two windows and a session window: every kind of window the job compiles."""


@pytest.mark.integration
def test_the_readers_taking_turns_lose_nothing(jobs: Jobs) -> None:
    """The files source's two readers take the files in turns (each file goes to the reader that has waited
    longest), and the one that read the last file turns idle: no reading of a window still open may be lost.
    Flink's two-phase window aggregation keeps a reader's part of an open window in a local buffer until its
    own watermark passes the window's end or a checkpoint flushes it; once the reader is idle, the other one's
    watermark fires the window without that part, which then arrives late and is dropped (196 differences on
    the compiled job before it asked for one-phase aggregation). Checkpoints an hour apart here, so that none
    flushes the buffers between two files: the sleepy scenario in 16 files, one at a time, must give the
    gateway's windows."""
    fed = jobs[2]["turns"]  # submitted with the others, whose input is read and whose jobs stopped: readers idle
    fed.feed(range(len(fed.files)), 0)
    assert fed.settled() == len(fed.side.lines)
    _check("sleepy, the readers taking turns", fed.side, fed.output(), "checkpoints an hour apart")


@pytest.mark.integration
def test_a_taskmanager_killed_mid_run_changes_nothing_in_the_committed_output(flink: Cluster, jobs: Jobs) -> None:
    """Exactly once into the results path: the sleepy scenario (most of its readings are late in the global
    mode) reaches a job of parallelism 2 in 16 files, placed one by one; once a checkpoint has completed and one
    more file has been read, the TaskManager that runs the job's source is SIGKILLed, a replacement is started, the
    job restarts from its checkpoint on the TaskManager left (seven slots: room for the job's two) and the rest of
    the input arrives. The committed part files hold every window and late record of the gateway's, each once,
    but for the documented rules."""
    fed = jobs[2]["kill"]  # submitted with the others, whose input is read and whose jobs stopped: readers idle
    files, jid = fed.files, fed.jid
    fed.feed(range(6), 0)
    triggered = flink.checkpoint_ids(jid)[1]
    deadline = time.monotonic() + 60
    while flink.checkpoint_ids(jid)[0] <= triggered:  # a checkpoint triggered after these readings, completed
        assert time.monotonic() < deadline, "no checkpoint completed"
        time.sleep(0.1)
    fed.feed(range(6, 7), sum(map(len, files[:6])))  # read since that checkpoint: read again after the restore
    before = flink.checkpoints(jid)
    victim = flink.taskmanager_of(jid)  # one that runs the job's source (and maybe every task of the job)
    flink.kill(victim)  # SIGKILL to its process group
    flink.start(f"{victim}-replaced", "taskmanager.sh")  # the shared cluster keeps two TaskManagers
    deadline = time.monotonic() + 120
    while flink.restarts(jid) < 1:
        assert time.monotonic() < deadline, "the job did not restart after the TaskManager was killed"
        time.sleep(0.3)

    # read again: what the source had read since the barrier of the checkpoint restored passed it (the file read
    # since, or part of it; more would be files read together, in no fixed order: docs/scale-out.md)
    replayed = fed.settled()
    assert 0 <= replayed <= len(files[6]), replayed
    fed.feed(range(7, len(files)), replayed)
    assert fed.settled() == replayed + sum(map(len, files[7:]))
    restarts = flink.restarts(jid)
    job = fed.output()
    assert before >= 1 and restarts >= 1, f"checkpoints before the kill {before}, restarts {restarts}"
    explained = _check("sleepy, a TaskManager killed", fed.side, job, f"{restarts} restart(s)")
    rules = {e.split(" ", 2)[1] for e in explained}
    assert "E" in rules, rules


def test_compile_refuses_the_patterns_match_recognize_cannot_run() -> None:
    """Each pattern setting without an exact MATCH_RECOGNIZE form is refused, named, with what to do; the
    patterns that map compile (one MATCH_RECOGNIZE each, WITHIN one ms more than the gateway's within)."""
    base = {"engine": {"watermark": {"mode": "global"}}, "metric_types": {"string": ["door", "status"]},
            "groups": {"g": ["dev-*"]}}  # fmt: skip
    bad = [
        {"name": "left_open", "steps": [{"name": "o", "where": 'door == "open"'},
                                        {"name": "c", "follow": "not_followed_by", "where": 'door == "closed"',
                                         "within": "5m"}]},
        {"name": "fast", "on": "both", "steps": [{"name": "a", "where": "temp_c > 80"}]},
        {"name": "noskip", "skip": "no_skip", "steps": [{"name": "a", "where": "temp_c > 80"}]},
        {"name": "grouped", "key": "group:g", "steps": [{"name": "a", "where": "temp_c > 80"}]},
        {"name": "loop", "steps": [{"name": "a", "where": "temp_c > 80", "at_least": 2},
                                   {"name": "b", "where": "temp_c < 10"}]},
    ]  # fmt: skip
    with pytest.raises(FlinkRefused) as exc:
        compile_flink_sql(parse_config({**base, "patterns": bad}, env={}))
    assert [p.split(":")[0] for p in exc.value.problems] == [
        "patterns[left_open].steps[c]", "patterns[fast].on = \"both\"", "patterns[noskip].skip = \"no_skip\"",
        "patterns[grouped].key = \"group", "patterns[loop].steps[a]",
    ]  # fmt: skip
    text = str(exc.value)
    assert "FLINK-18642" in text and "times = 2" in text and "skip_past_last_event" in text
    script = compile_flink_sql(parse_config({**base, "patterns": PATTERNS}, env={}))
    assert script.count("MATCH_RECOGNIZE (") == len(PATTERNS) and "[[windows]]" not in script
    assert "WITHIN INTERVAL '300.001' SECOND(9, 3)" in script and "AFTER MATCH SKIP PAST LAST ROW" in script
    assert "INSERT INTO window_results" not in script and "INSERT INTO alerts" in script


@given(
    st.text("ab-*?[]!^.\\&~|", max_size=8),
    st.text("ab-.!^[]\\&~|", max_size=6),
)
def test_device_globs_become_the_regex_fnmatch_means(glob: str, device: str) -> None:
    """A pattern's ``devices`` globs go into the job as regular expressions (Java's syntax agrees with Python's
    on what is generated: ``.``, ``.*``, classes, backslash escapes): the same devices as ``fnmatchcase``."""
    import re
    from fnmatch import fnmatchcase

    from gateway.flinkcep import _glob

    try:
        regex = re.compile(f"(?:{_glob(glob)})", re.S)
    except re.error:  # a reversed range ('[b-a]'): compile refuses the pattern (patterns[p].devices)
        cfg = parse_config({"patterns": [{"name": "p", "devices": [glob], "steps": [{"name": "a", "where": "x > 1"}]}]},
                           env={})  # fmt: skip
        assert any(x.startswith("patterns[p].devices") for x in refusals(cfg))
        return
    assert (regex.fullmatch(device) is not None) == fnmatchcase(device, glob)

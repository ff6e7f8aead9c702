"""``edgekit-gateway compile --target flink-sql``: a gateway configuration as an Apache Flink SQL job.

The job reads the readings a bridge forwards (one JSON object per reading, docs/scale-out.md "Input") from a
directory (Flink's files connector) or a Kafka topic, runs the configuration's windows with Flink's window
table-valued functions (TUMBLE, SESSION; a sliding window as tumbling ones) on one event-time watermark, and
writes window results and late records in the gateway's own JSON (docs/scale-out.md "Output"). Which readings a
window takes and which are late is decided from each line's ``wm0_ms`` (the gateway's watermark before its
message), by the gateway's rules, never from the job's own watermark, which after a restore from a checkpoint
starts again from nothing (docs/scale-out.md, "A TaskManager killed"). What Flink SQL cannot do as the gateway does is
refused with a message that names the setting and what to do (:class:`FlinkRefused`): nothing is approximated
without a word.

Pure functions, no I/O: :func:`compile_flink_sql` makes the script; the bridge's lines are
:func:`gateway.bridge.message_records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .config import Config
from .engine.config import WindowSpec
from .errors import ConfigError
from .flinkcep import ALERT_COLUMNS, pattern_refusals, pattern_selects

__all__ = [
    "DEFAULT_DIR",
    "DEFAULT_KAFKA",
    "FlinkRefused",
    "SinkPaths",
    "compile_flink_sql",
    "refusals",
]

Source = Literal["files", "kafka"]

PAD_T: Final = 15  # event time in ms: 13 digits until the year 2286
PAD_ID: Final = 10  # boot and seq: below 2**31
PAD_N: Final = 20  # arrival order: a BIGINT
KEY_LEN: Final = PAD_T + 2 * PAD_ID + PAD_N
"""Length of the sortable prefix that ``first`` and ``last`` order readings by (then the value as text)."""
N_MAX: Final = 2**63 - 1
_WM_TOP: Final = "CASE WHEN wm_ms IS NULL OR wm_ms < wm0_ms THEN wm0_ms ELSE wm_ms END"
"""The largest event time that moved the gateway's watermark up to this reading: ``wm0_ms`` on every line (after
a restore the job's watermark is back where the gateway's was at the first line it reads), ``wm_ms`` after a
message's last reading."""
IDLE_TIMEOUT: Final = "500 ms"
"""How long a source reader without input waits before it is idle (its watermark no longer counts)."""


class FlinkRefused(ConfigError):
    """The configuration has settings the Flink job cannot run as the gateway does; ``problems`` lists them,
    each naming the setting and what to do."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(
            "cannot compile to Flink SQL without changing results:\n" + "\n".join(f"  - {p}" for p in problems)
        )


DEFAULT_DIR: Final = "file:///var/lib/edgekit/flink"
DEFAULT_KAFKA: Final = "localhost:9092"


@dataclass(frozen=True, slots=True)
class SinkPaths:
    """Where the job reads and writes: directories (files connector) or topics (Kafka)."""

    readings: str = f"{DEFAULT_DIR}/readings"
    windows: str = f"{DEFAULT_DIR}/out/windows"
    late: str = f"{DEFAULT_DIR}/out/late"
    alerts: str = f"{DEFAULT_DIR}/out/alerts"
    bootstrap_servers: str = DEFAULT_KAFKA
    monitor_interval: str = ""
    """Files connector: how often the job looks for new files (``10s``); empty: read what is there, then end."""


# --- what cannot be compiled ------------------------------------------------------------------------------


def refusals(cfg: Config) -> list[str]:
    """Every setting of ``cfg`` the job cannot run as the gateway does, each with what to do."""
    out: list[str] = []
    eng = cfg.engine
    wm = eng.watermark
    if wm.mode != "global":
        out.append(
            f'engine.watermark.mode = "{wm.mode}": per-device watermarks (and the flushed marker that moves them) '
            "have no Flink SQL counterpart: a Flink watermark is per source split, the minimum across inputs. "
            'Set [engine.watermark] mode = "global" (one watermark, as the job has), or keep these windows on '
            "the gateway (docs/scale-out.md, Watermarks)"
        )
    if wm.classes:
        out.append(
            "engine.watermark.classes: one out-of-orderness bound per job (the WATERMARK FOR clause); "
            "remove the classes and set engine.watermark.out_of_orderness to the largest bound"
        )
    if not eng.windows and not cfg.patterns:
        out.append("[[windows]]: none declared; a job needs at least one window or pattern")
    for w in eng.windows:
        where = f"windows[{w.name}]"
        if w.out_of_orderness_ms is not None and w.out_of_orderness_ms != wm.out_of_orderness_ms:
            out.append(
                f"{where}.out_of_orderness: a window's own bound needs its own watermark; a job has one. Remove "
                "it or set engine.watermark.out_of_orderness to it"
            )
        if w.allowed_lateness_ms:
            out.append(
                f"{where}.allowed_lateness: Flink SQL's window functions emit each window once and drop what "
                "comes after (no re-fired updates into an append-only sink). Set allowed_lateness = 0, or raise "
                "engine.watermark.out_of_orderness by it (results then come later, and exact)"
            )
        if w.early_every_ms or w.early_count:
            out.append(
                f"{where}.early_every / early_count: Flink SQL's window functions have no early (provisional) "
                "results. Remove the trigger, or keep this window on the gateway"
            )
        if w.relative is not None:
            out.append(
                f"{where}.relative: group-relative values are computed by the gateway from a window's final "
                "results and group declarations; not compiled. Remove [windows.relative] from the job's "
                "configuration, or keep this window on the gateway"
            )
        if w.kind == "sliding" and w.size_ms % w.slide_ms:
            out.append(
                f"{where}: size {w.size_ms} ms is not a multiple of slide {w.slide_ms} ms, which Flink's HOP "
                "needs. Choose a slide that divides the size"
            )
    if eng.unsynced not in ("reject", "window"):  # pragma: no cover - the parser allows only these
        out.append(f"engine.unsynced = {eng.unsynced!r}")
    out += pattern_refusals(cfg)
    for j in cfg.joins:
        out.append(
            f"joins[{j.name}]: interval joins are not compiled yet (Flink SQL has interval joins, with their own "
            "rules for late rows); keep the join on the gateway, or remove it from the job's configuration"
        )
    if cfg.anomaly.enabled:
        window = (
            ' (baseline = "window" too: an OVER window\'s AVG and STDDEV over the preceding rows would take every '
            "point, where the gateway's rolling window holds only the points it learned - it freezes while an "
            "anomaly is open, scores a shifted level against itself, re-learns after gaps and re-baselines - so "
            "its z-scores, and the anomalies they open and close, would differ)"
            if any(d.baseline == "window" for d in (cfg.anomaly.detector, *cfg.anomaly.overrides.values()))
            else ""
        )
        out.append(
            "[anomaly]: EWMA and rolling-window baselines, seasonal and multivariate scores have no exact Flink SQL "
            f"form{window}; keep anomaly detection on the gateway (the bridge runs it per device at the site), or "
            "remove the section from the job's configuration"
        )
    return out


# --- the script -------------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _interval(ms: int) -> str:
    s, frac = divmod(ms, 1000)
    return f"INTERVAL '{s}.{frac:03d}' SECOND(9, 3)" if frac else f"INTERVAL '{s}' SECOND(9)"


def _ms(ts: str) -> str:
    """Epoch milliseconds of a TIMESTAMP(3) (the session's time zone is UTC)."""
    return f"(UNIX_TIMESTAMP(CAST({ts} AS STRING)) * 1000 + CAST(DATE_FORMAT({ts}, 'SSS') AS BIGINT))"


def _order_key(first: bool) -> str:
    """A string that sorts as the gateway orders readings for ``first`` / ``last``: by (t, boot, seq), then by
    arrival (the one that arrived first wins a tie both ways)."""
    n = "n" if first else f"({N_MAX} - n)"
    return (
        f"LPAD(CAST(t_ms AS STRING), {PAD_T}, '0') || LPAD(CAST(boot AS STRING), {PAD_ID}, '0') || "
        f"LPAD(CAST(seq AS STRING), {PAD_ID}, '0') || LPAD(CAST({n} AS STRING), {PAD_N}, '0')"
    )


_SQL_AGGS: Final = (
    ("sum", "SUM", "sum"),
    ("mean", "AVG", "mean"),
    ("min", "MIN", "min"),
    ("max", "MAX", "max"),
    ("stddev", "STDDEV_SAMP", "sd"),
)
"""A window's aggregate, the Flink SQL function that computes it, and its column's prefix."""


def _aggs(w: WindowSpec, i: int, metric: str) -> list[str]:
    v = f"num[{_q(metric)}]"
    cols = [f"COUNT({v}) AS c{i}"]
    names = set(w.aggregates)
    cols += [f"{fn}({v}) AS {col}{i}" for agg, fn, col in _SQL_AGGS if agg in names]
    if "first" in names:
        cols.append(f"MIN(CASE WHEN {v} IS NULL THEN NULL ELSE {_order_key(True)} || CAST({v} AS STRING) END) AS f{i}")
    if "last" in names:
        cols.append(f"MAX(CASE WHEN {v} IS NULL THEN NULL ELSE {_order_key(False)} || CAST({v} AS STRING) END) AS l{i}")
    return cols


def _agg_map(w: WindowSpec, i: int) -> str:
    column = {agg: f"{col}{i}" for agg, _, col in _SQL_AGGS}
    column["first"] = f"CAST(SUBSTRING(f{i} FROM {KEY_LEN + 1}) AS DOUBLE)"
    column["last"] = f"CAST(SUBSTRING(l{i} FROM {KEY_LEN + 1}) AS DOUBLE)"
    parts: list[str] = []
    for name in w.aggregates:
        if name == "count":  # a field of its own, as in the gateway's result
            continue
        parts += [_q(name), column[name]]
    return "MAP[" + ", ".join(parts) + "]"


WM0: Final = "gw_wm0"
"""The column of ``readings_in`` holding the gateway's watermark before the reading's message (``wm0_ms`` - bound;
NULL before the first): every decision on lateness is taken from it, never from the job's own watermark."""


def _end(size_ms: int, offset_ms: int) -> str:
    """The end of the window of a ``size``/``offset`` grid that contains ``t_ms``."""
    return f"(t_ms - MOD(t_ms - {offset_ms}, {size_ms}) + {size_ms})"


def _on_time(w: WindowSpec, offset_ms: int) -> str:
    """The gateway's rule (allowed lateness 0, gateway/engine/operators.py): a reading goes into a window whose end
    the watermark before its message has not reached; a session reading, when its own session ``[t, t + gap)``
    has not passed it."""
    if w.kind == "session":
        return f"({WM0} IS NULL OR t_ms + {w.gap_ms} > {WM0})"
    return f"({WM0} IS NULL OR {_end(w.size_ms, offset_ms)} > {WM0})"


def _grids(w: WindowSpec) -> list[int]:
    """The offsets of the tumbling grids a window is made of: a sliding window of ``size = k * slide`` is ``k``
    tumbling windows of ``size``, offset by ``slide`` each; so each window gets exactly the readings on time for
    it (Flink's HOP puts a reading into every window that contains it once its own watermark allows, and that
    watermark starts again from nothing after a restore). Sessions and tumbling windows: one."""
    if w.kind == "sliding":
        return [(w.offset_ms + j * w.slide_ms) % w.size_ms for j in range(w.size_ms // w.slide_ms)]
    return [w.offset_ms]


def _tvf(w: WindowSpec, table: str, offset_ms: int) -> str:
    keys = "site" if w.key == "site" else "site, device"
    if w.kind == "session":
        # gap - 1 ms: Flink merges sessions that touch ([a, b) and [b, c)), the gateway only those that overlap;
        # the end written is the window's end + 1 ms
        return f"SESSION(TABLE {table} PARTITION BY ({keys}), DESCRIPTOR(ts), {_interval(w.gap_ms - 1)})"
    args = f"DESCRIPTOR(ts), {_interval(w.size_ms)}"
    if offset_ms:
        args += f", {_interval(offset_ms)}"
    return f"TUMBLE(TABLE {table}, {args})"


def _window_sql(w: WindowSpec, idx: int, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """One window's input views (the readings on time for it, one per grid), its aggregates (a named query of the
    INSERT's WITH clause per grid: a view of a SESSION with PARTITION BY does not survive Flink 2.3's view
    expansion) and the SELECTs of its results, one per grid and metric."""
    keys = "site" if w.key == "site" else "site, device"
    cols: list[str] = []
    for i, m in enumerate(w.metrics):
        cols += _aggs(w, i, m)
    views: list[str] = []
    queries: list[str] = []
    selects: list[str] = []
    end_extra = " + 1" if w.kind == "session" else ""
    device = "CAST(NULL AS STRING)" if w.key == "site" else "device"
    grids = _grids(w)
    for g, offset in enumerate(grids):
        name = f"w{idx}" if len(grids) == 1 else f"w{idx}g{g}"
        table = f"{prefix}{name}_in"
        views.append(
            f"-- window {w.name}: the readings on time for it"
            + ("" if len(grids) == 1 else f" (grid {g + 1} of {len(grids)}, offset {offset} ms)")
            + f"\nCREATE TEMPORARY VIEW {table} AS\nSELECT * FROM {prefix}readings_in WHERE {_on_time(w, offset)};"
        )
        queries.append(
            f"{name} AS (\n  -- window {w.name}: {w.kind}\n  SELECT {keys}, window_start, window_end,\n    "
            + ",\n    ".join(cols)
            + f"\n  FROM TABLE({_tvf(w, table, offset)})\n  GROUP BY {keys}, window_start, window_end\n)"
        )
        selects += [
            f"SELECT 1, {_q(w.name)}, site, {device}, {_q(m)}, {_ms('window_start')}, {_ms('window_end')}{end_extra}, "
            f"'final', 1, 'watermark', c{i}, {_agg_map(w, i)} FROM {name} WHERE c{i} > 0"
            for i, m in enumerate(w.metrics)
        ]
    return views, queries, selects


def _late_selects(w: WindowSpec, prefix: str) -> list[str]:
    """Late records: readings whose last window the gateway's watermark before their message had passed (a
    session reading: its own session), with that watermark: the same decision as :func:`_on_time`."""
    if w.kind == "session":
        late_if = f"t_ms + {w.gap_ms} <= {WM0}"
    else:
        slide = w.size_ms if w.kind == "tumbling" else w.slide_ms
        late_if = f"(t_ms - MOD(t_ms - {w.offset_ms}, {slide})) + {w.size_ms} <= {WM0}"
    return [
        f"SELECT 1, {_q(w.name)}, site, device, {_q(m)}, t_ms, boot, seq, {WM0} - t_ms, {WM0}, 'too_late', "
        f"num[{_q(m)}] FROM {prefix}readings_in WHERE num[{_q(m)}] IS NOT NULL AND {WM0} IS NOT NULL AND {late_if}"
        for m in w.metrics
    ]


def compile_flink_sql(
    cfg: Config,
    paths: SinkPaths | None = None,
    *,
    source: Source = "files",
    parallelism: int | None = None,
    prefix: str = "",
) -> str:
    """The Flink SQL script of ``cfg``'s windows; raises :class:`FlinkRefused` listing what cannot be run.

    ``prefix`` starts the name of every table and view, so that the scripts of several jobs can run in one
    session."""
    problems = refusals(cfg)
    if problems:
        raise FlinkRefused(problems)
    p = paths or SinkPaths()
    eng = cfg.engine
    bound = eng.watermark.out_of_orderness_ms
    out: list[str] = [
        "-- Generated by `edgekit-gateway compile --target flink-sql` (docs/scale-out.md). Do not edit: compile",
        "-- the gateway configuration again.",
        "SET 'table.local-time-zone' = 'UTC';",
        "-- the watermark moves with the records (wm0_ms, and wm_ms once per message), never on a timer; it only",
        "-- decides when a window fires: what a window takes, and what is late, is decided from wm0_ms",
        "SET 'pipeline.auto-watermark-interval' = '0';",
        "SET 'execution.checkpointing.mode' = 'EXACTLY_ONCE';",
        "-- one-phase window aggregation: the two-phase one keeps a source reader's part of an open window in a",
        "-- local buffer until that reader's watermark passes the window's end; a reader turned idle never sends",
        "-- it before another reader's watermark fires the window, and the part arrives late (docs/scale-out.md)",
        "SET 'table.optimizer.agg-phase-strategy' = 'ONE_PHASE';",
    ]
    if parallelism is not None:
        out.append(f"SET 'parallelism.default' = '{parallelism}';")
    if source == "files":
        # one source reader: the watermark is the gateway's global one, not the minimum over readers
        opts = ["'connector' = 'filesystem'", f"'path' = {_q(p.readings)}", "'format' = 'json'"]
        if p.monitor_interval:
            opts.append(f"'source.monitor-interval' = {_q(p.monitor_interval)}")
            # a reader without a file to read is idle: it does not hold the watermark back (docs/scale-out.md)
            out.append(f"SET 'table.exec.source.idle-timeout' = {_q(IDLE_TIMEOUT)};")
    else:
        opts = [
            "'connector' = 'kafka'",
            f"'topic' = {_q(p.readings)}",
            f"'properties.bootstrap.servers' = {_q(p.bootstrap_servers)}",
            "'properties.group.id' = 'edgekit-flink'",
            "'scan.startup.mode' = 'earliest-offset'",
            "'format' = 'json'",
        ]
    out.append(
        "-- one row per accepted reading (docs/scale-out.md, Input); the watermark is the gateway's global one,\n"
        f"-- max event time - {bound} ms, minus 1 ms: Flink fires [start, end) at watermark >= end - 1\n"
        f"CREATE TABLE {prefix}readings (\n"
        "  v INT, site STRING, device STRING, boot BIGINT, seq BIGINT, t_ms BIGINT, q STRING,\n"
        "  num MAP<STRING, DOUBLE>, str MAP<STRING, STRING>, bool MAP<STRING, BOOLEAN>,\n"
        "  n BIGINT, wm0_ms BIGINT, wm_ms BIGINT, received_ms BIGINT,\n"
        "  ts AS TO_TIMESTAMP_LTZ(t_ms, 3),\n"
        f"  WATERMARK FOR ts AS TO_TIMESTAMP_LTZ({_WM_TOP} - {bound + 1}, 3)\n"
        ") WITH (\n  " + ",\n  ".join(opts) + "\n);"
    )
    keep = "" if eng.unsynced == "window" else "\nWHERE q <> 'u'"
    out.append(
        "-- gw_wm0: the gateway's watermark before the reading's message; lateness is decided from it alone\n"
        f"CREATE TEMPORARY VIEW {prefix}readings_in AS\n"
        f"SELECT *, wm0_ms - {bound} AS {WM0} FROM {prefix}readings{keep};"
    )
    sink_opts = "'format' = 'json', 'json.encode.ignore-null-fields' = 'true'"

    def sink(name: str, cols: str, where: str) -> str:
        if source == "files":
            conn = f"'connector' = 'filesystem', 'path' = {_q(where)}, {sink_opts}"
        else:
            conn = (
                f"'connector' = 'kafka', 'topic' = {_q(where)}, 'properties.bootstrap.servers' = "
                f"{_q(p.bootstrap_servers)}, 'sink.delivery-guarantee' = 'exactly-once', "
                f"'sink.transactional-id-prefix' = 'edgekit-{name}', {sink_opts}"
            )
        return f"CREATE TABLE {prefix}{name} (\n  {cols}\n) WITH ({conn});"

    out.append(
        sink(
            "window_results",
            "v INT, `window` STRING, site STRING, device STRING, metric STRING, start_ms BIGINT, end_ms BIGINT,\n"
            "  `result` STRING, revision INT, fired STRING, `count` BIGINT, aggregates MAP<STRING, DOUBLE>",
            p.windows,
        )
    )
    out.append(
        sink(
            "late_records",
            "v INT, `window` STRING, site STRING, device STRING, metric STRING, t_ms BIGINT, boot BIGINT,\n"
            "  seq BIGINT, late_by_ms BIGINT, watermark_ms BIGINT, reason STRING, `value` DOUBLE",
            p.late,
        )
    )
    queries: list[str] = []
    windows: list[str] = []
    late: list[str] = []
    for idx, w in enumerate(eng.windows):
        views, query, selects = _window_sql(w, idx, prefix)
        out += views
        queries += query
        windows += selects
        late += _late_selects(w, prefix)
    if eng.unsynced == "reject":
        late.append(
            "SELECT 1, '', site, device, '', t_ms, boot, seq, 0, CAST(NULL AS BIGINT), 'unsynced', "
            f"CAST(NULL AS DOUBLE) FROM {prefix}readings WHERE q = 'u'"
        )
    inserts: list[str] = []
    if windows:
        inserts.append(
            f"INSERT INTO {prefix}window_results\nWITH "
            + ",\n".join(queries)
            + "\n"
            + "\nUNION ALL\n".join(windows)
            + ";"
        )
    if late:
        inserts.append(f"INSERT INTO {prefix}late_records\n" + "\nUNION ALL\n".join(late) + ";")
    if cfg.patterns:
        out.append(sink("alerts", ALERT_COLUMNS, p.alerts))
        inserts.append(f"INSERT INTO {prefix}alerts\n" + "\nUNION ALL\n".join(pattern_selects(cfg, prefix)) + ";")
    out.append("EXECUTE STATEMENT SET\nBEGIN\n" + "\n".join(inserts) + "\nEND;")
    return "\n".join(out) + "\n"

"""``edgekit-gateway top``: a live view of a running gateway in a terminal (over SSH), from its stats file.

The gateway rewrites its stats file (``run --stats-file``) every second; ``top`` reads it and redraws
with plain ANSI escapes: per-device watermark lag, reading rates and late readings (worst lag first),
the latest window results and the recent alerts. ``q`` or Ctrl-C quits. ``--once`` prints one frame
without escapes (for scripts and logs).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["load_stats", "render", "run_top"]

STALE_S = 5.0


def load_stats(path: Path) -> dict[str, Any] | None:
    """The stats file's content, or ``None`` if it is missing or being replaced right now."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _dur(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    if abs(s) < 60:
        return f"{s:.1f}s"
    if abs(s) < 3600:
        return f"{s / 60:.1f}m"
    if abs(s) < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _clock(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%H:%M:%S", time.gmtime(ms / 1000))


def _size(stream: TextIO) -> os.terminal_size:
    """The terminal's size itself (COLUMNS/LINES in the environment may be stale), else a default."""
    try:
        return os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return shutil.get_terminal_size((120, 60))


def render(stats: dict[str, Any], prev: dict[str, Any] | None, *, width: int = 100, height: int = 40) -> list[str]:
    """One frame as lines of text (no escapes). ``prev`` (the previous frame's stats) gives the rates."""
    live = stats.get("live", {})
    now = live.get("now_ms") or 0
    p, s, m = stats.get("pipeline", {}), stats.get("sink", {}), stats.get("mqtt", {})
    dt_s = (now - prev["live"]["now_ms"]) / 1000 if prev and prev.get("live", {}).get("now_ms") else 0.0
    age = time.time() - now / 1000 if now else 0.0
    out = [
        f"edgekit gateway  {_clock(now)} UTC  up {_dur(now - live.get('started_ms', now))}"
        f"  mqtt {'connected' if m.get('connected') else 'DISCONNECTED'}"
        + (f"  STALE: stats are {age:.0f} s old (is the gateway running?)" if age > STALE_S else ""),
        f"messages {p.get('messages', 0)}  readings {p.get('readings_accepted', 0)}  dup {p.get('duplicates', 0)}"
        f"  dead {p.get('dead_letters', 0)}  windows {p.get('window_results', 0)}  late {p.get('late_readings', 0)}"
        f"  alerts {p.get('alerts', 0)}",
        f"influx: written {s.get('points_written', 0)}  pending {s.get('pending', 0)}"
        f"  refused {s.get('points_refused', 0)}  failures {s.get('write_failures', 0)}"
        f"  last write {s.get('last_write_ms', 0)} ms",
        "",
    ]
    if p.get("fast_alerts"):  # rules with on = "both" (or "arrival"): how often the fast path was wrong
        fast = (
            f"fast alerts {p['fast_alerts']}: confirmed {p.get('alerts_confirmed', 0)}, retracted "
            f"{p.get('alerts_retracted', 0)}; event-time alerts it missed {p.get('alerts_missed_fast', 0)}"
        )
        out.insert(2, fast)
    notify = stats.get("notify")
    if notify:  # [[notify]] targets (docs/notify.md): what went out, what waits, what failed or was given up
        parts = []
        for name, t in notify.get("targets", {}).items():
            dropped = sum(t.get("dropped", {}).values())
            parts.append(
                f"{name} sent {t.get('sent', 0)}"
                + (f" pending {t['pending']}" if t.get("pending") else "")
                + (f" failures {t['failures']}" if t.get("failures") else "")
                + (f" dropped {dropped}" if dropped else "")
            )
        shed = f"; shed {notify['shed']} (inbox full)" if notify.get("shed") else ""
        out.insert(len(out) - 1, "notify: " + "; ".join(parts) + shed)
    devices: dict[str, dict[str, Any]] = live.get("devices", {})
    old: dict[str, dict[str, Any]] = (prev or {}).get("live", {}).get("devices", {})
    head = (
        f"{'DEVICE':<20} {'SITE':<12} {'WM LAG':>8} {'LAST EVENT':>10} {'SEEN':>8} {'READINGS':>9} {'/MIN':>7} "
        f"{'LATE':>6} {'FW':<10}"
    )
    windows = list(reversed(live.get("windows", [])))[:8]
    alerts = list(reversed(live.get("alerts", [])))[:8]
    active = sum(1 for d in devices.values() if d.get("active"))
    out[-1] = f"devices: {len(devices)} ({active} active), worst watermark lag first"
    out.append(head)
    budget = max(3, height - len(out) - len(windows) - max(1, len(alerts)) - 8)
    rows = sorted(devices.items(), key=lambda kv: -(kv[1].get("watermark_lag_ms") or -1))
    for name, d in rows[:budget]:
        rate = "-"
        if dt_s > 0 and name in old:
            rate = f"{(d['readings'] - old[name]['readings']) * 60 / dt_s:.1f}"
        seen = now - d["last_seen_ms"] if d.get("last_seen_ms") else None
        out.append(
            f"{name[:20]:<20} {d.get('site', '')[:12]:<12} {_dur(d.get('watermark_lag_ms')):>8} "
            f"{_clock(d.get('last_event_ms')):>10} {_dur(seen):>8} {d.get('readings', 0):>9} {rate:>7} "
            f"{d.get('late', 0):>6} {(d.get('fw') or '-')[:10]:<10}"
            + ("" if d.get("active") else "  idle")
            + (f"  ota: {d['ota']}" if d.get("ota") else "")
        )
    if len(rows) > budget:
        out.append(f"... {len(rows) - budget} more")
    out += ["", f"{'LATEST WINDOWS':<20} {'KEY':<14} {'METRIC':<10} {'START':>8} {'COUNT':>6} {'MEAN':>9} REV FIRED"]
    for w in windows:
        mean = w.get("mean")
        out.append(
            f"{w['window'][:20]:<20} {w['key'][:14]:<14} {w['metric'][:10]:<10} {_clock(w['start_ms']):>8} "
            f"{w['count']:>6} {'-' if mean is None else f'{mean:.2f}':>9} {w['revision']:>3} {w['fired']}"
        )
    out += ["", f"{'RECENT ALERTS':<20} {'SEVERITY':<9} {'KEY':<14} {'AT':>8} MESSAGE"]
    for a in alerts:
        out.append(
            f"{(a['source'] + '/' + a['name'])[:20]:<20} {a['severity']:<9} {a['key'][:14]:<14} "
            f"{_clock(a['last_ms']):>8} {a.get('message', '')}"
        )
    if not alerts:
        out.append("(none)")
    return [line[:width] for line in out]


@contextlib.contextmanager
def _terminal(stream: TextIO) -> Iterator[bool]:
    """Alternate screen, hidden cursor, and stdin in cbreak mode (for ``q``) when both are terminals."""
    keys = sys.stdin.isatty()
    saved = None
    if keys:
        import termios
        import tty

        saved = termios.tcgetattr(sys.stdin)
        tty.setcbreak(sys.stdin.fileno())
    stream.write("\x1b[?1049h\x1b[?25l")
    try:
        yield keys
    finally:
        stream.write("\x1b[?25h\x1b[?1049l")
        stream.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def _wait_for_quit(seconds: float, keys: bool) -> bool:
    """Sleep ``seconds``; True if ``q`` was pressed meanwhile."""
    if not keys:
        time.sleep(seconds)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    return bool(ready) and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q")


def run_top(path: Path, *, interval_s: float = 1.0, once: bool = False, stream: TextIO | None = None) -> int:
    out = stream if stream is not None else sys.stdout
    if once:
        stats = load_stats(path)
        if stats is None:
            print(
                f"edgekit-gateway top: no stats in {path} (is the gateway running with --stats-file?)", file=sys.stderr
            )
            return 1
        size = _size(out)
        out.write("\n".join(render(stats, None, width=size.columns, height=size.lines)) + "\n")
        return 0
    prev: dict[str, Any] | None = None
    try:
        with _terminal(out) as keys:
            while True:
                stats = load_stats(path)
                size = _size(out)
                if stats is None:
                    lines = [f"waiting for {path} (the gateway writes it every second with --stats-file) ..."]
                else:
                    lines = render(stats, prev, width=size.columns, height=size.lines)
                    if prev is None or stats.get("live", {}).get("now_ms") != prev.get("live", {}).get("now_ms"):
                        prev = stats
                lines.append("")
                lines.append("q quits")
                out.write("\x1b[H\x1b[2J" + "\r\n".join(lines))
                out.flush()
                if _wait_for_quit(interval_s, keys):
                    return 0
    except KeyboardInterrupt:
        return 0

"""The report page renders in headless Chromium (Debian's ``chromium``) with its six plots drawn.

The run mixes every kind of event the plots show: a flaky network (late readings, re-fired windows), a
sleepy board, unsynced clocks (refused readings), an injected anomaly and scripted sequences. Chromium
must parse the page into six figures with their SVG marks (``--dump-dom``) and paint it
(``--screenshot``); the PNG is decoded here and must hold the plots' colours, not a blank page.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import pytest

from sim.commands import prepare
from sim.inprocess import gateway_config, run_in_process
from sim.report import write_report
from sim.scenario import parse_scenario
from sim.verify import compare

SCENARIO = {
    "scenario": {"name": "report-check", "description": "every kind of event the report draws", "seed": 11,
                 "duration": "40m", "start_ms": 1_764_072_000_000},
    "fleet": {"sites": ["a"], "metrics": ["temp_c"], "interval": "60s",
              "groups": [{"name": "live", "devices": 3}, {"name": "sleepy", "devices": 1, "publish_every": 10,
                         "sleep": True}, {"name": "unsynced", "devices": 1, "unsynced_for": "8m", "publish_every": 2}]},
    "network": {"delay": {"dist": "lognormal", "median": "100ms", "sigma": 1.0}, "loss": 0.1, "ack_loss": 0.1,
                "duplicate": 0.05, "reorder": 0.15, "reorder_delay": "4m"},
    "anomalies": [{"kind": "level_shift", "device": "dev-0002", "metric": "temp_c", "start": "32m", "end": "38m",
                   "magnitude": 8.0}],  # after the detector's warm-up (30 readings), so the score plot shows it
    "sequences": [{"kind": "door_left_open", "device": "dev-0001", "at": "5m"},
                  {"kind": "two_failures", "device": "dev-0003", "at": "12m"}],
    "gateway": {"windows": [{"name": "t5", "kind": "tumbling", "size": "5m", "metrics": ["temp_c"],
                             "allowed_lateness": "2m"}], "metric_types": {"string": ["door", "status"]},
                "anomaly": {"metrics": ["temp_c"], "warmup": 5},
                "patterns": [{"name": "door_left_open", "steps": [
                    {"name": "opened", "where": 'door == "open"'},
                    {"name": "closed", "follow": "not_followed_by", "where": 'door == "closed"', "within": "5m"}]},
                    {"name": "failed_3x_5m", "within": "5m", "steps": [
                        {"name": "failed", "where": 'status == "FAILED"', "at_least": 3}]}]},
}  # fmt: skip

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; run scripts/setup.sh (apt-get install chromium)", pytrace=False)
    return path


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the rows (RGB or RGBA bytes) of an 8-bit non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) if channels == 3 else bytes(x for j, x in enumerate(r) if j % 4 != 3) for r in rows]


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    prep = prepare(parse_scenario(SCENARIO))
    res = run_in_process(prep.run, gateway_config(prep.gateway, prep.scenario.prefix))
    assert res.store is not None
    truth = prep.truth()
    verdict = compare(truth, res.store.found())
    assert verdict.ok, verdict.render()
    assert truth["expected"]["late"] and any(f[7] > 1 for f in truth["expected"]["firings"])
    page = write_report(tmp_path / "report.html", truth, verdict, res.alerts)

    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        dom = subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    for plot in ("arrival", "watermarks", "windows", "late", "anomalies-temp_c", "sequences", "scores"):
        start = dom.index(f'data-plot="{plot}"')
        figure = dom[start : dom.index("</figure>", start)]
        assert "<svg" in figure and figure.count('class="mark"') >= 1, plot
        assert "no data" not in figure, plot
        marks = int(figure.split('data-marks="')[1].split('"')[0])
        assert marks > 0, plot
    scores = dom[dom.index('data-plot="scores"') :]
    scores = scores[: scores.index("</figure>")]
    assert "level shift on dev-0002 temp_c: anomaly score" in scores
    assert "threshold: score 0.5" in scores and "anomaly opened (alert) (" in scores  # the shift opened one

    shot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", "--window-size=1100,4200", f"--screenshot={shot}",
             page.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1100, 4200)
    coloured = 0
    for row in rows[::2]:
        for x in range(0, len(row), 6):
            r, g, b = row[x], row[x + 1], row[x + 2]
            coloured += max(r, g, b) - min(r, g, b) > 60  # plot marks are coloured; text and axes are grey
    assert coloured > 2_000, coloured
    shutil.copy(shot, Path(tempfile.gettempdir()) / "edgekit-report-check.png")  # for a person to look at

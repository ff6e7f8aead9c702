# Shared state of one simulated board, for the MicroPython-side shims (machine, network, esp32,
# ntptime). Runs under the MicroPython unix port.
#
# Environment (set by sim/board/runner.py):
#   EDGEKIT_SIM    the board's hardware directory: hw.json (RTC, reset cause, drift), rtcmem.bin (RTC
#                  memory), scenario.json (sensor values, Wi-Fi outages, pins), sleep.json (written by
#                  deepsleep), truth.log (virtual time of each sensor measurement)
#   EDGEKIT_CLOCK  a file holding skip_ms: virtual time = host time + skip_ms. The runner changes it
#                  only while no board runs, so it is read once at start.
import json
import os
import sys
import time

DIR = os.getenv('EDGEKIT_SIM') or '.'
_CLOCK = os.getenv('EDGEKIT_CLOCK')


def _read_json(name, default):
    try:
        with open(DIR + '/' + name) as f:
            return json.load(f)
    except OSError:
        return default


def write_json(name, obj):
    p = DIR + '/' + name
    with open(p + '.tmp', 'w') as f:
        f.write(json.dumps(obj))
    os.rename(p + '.tmp', p)


SKIP = 0
if _CLOCK:
    with open(_CLOCK) as _f:
        SKIP = int(_f.read().split()[0])

HW = _read_json('hw.json', {})
SCN = _read_json('scenario.json', {})


def vt():
    """Virtual Unix milliseconds."""
    return time.time_ns() // 1000000 + SKIP


def in_window(key):
    t = vt()
    for a, b in SCN.get(key, ()):
        if a <= t < b:
            return True
    return False


def value(name, default=0.0):
    """A scenario quantity at the current virtual time: base + amp * sin(2 pi t / period)."""
    import math
    spec = SCN.get('values', {}).get(name)
    if spec is None:
        return default
    if not isinstance(spec, dict):
        return float(spec)
    per = spec.get('period_s', 3600) * 1000
    return spec.get('base', 0.0) + spec.get('amp', 0.0) * math.sin(2 * math.pi * (vt() % per) / per)


def truth(line):
    with open(DIR + '/truth.log', 'a') as f:
        f.write(line + '\n')


def end_process(sleep_ms):
    """Deep sleep: record when to wake, then end the process (the runner starts it again)."""
    write_json('sleep.json', {'at': vt(), 'ms': int(sleep_ms)})
    try:
        sys.stdout.flush()
    except AttributeError:
        pass
    sys.exit(0)

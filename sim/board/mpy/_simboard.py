# Shared state of one simulated board, for the MicroPython-side shims (machine, network, esp32,
# ntptime). Runs under the MicroPython unix port.
#
# Environment (set by sim/board/runner.py):
#   EDGEKIT_SIM    the board's hardware directory: hw.json (RTC, reset cause, RC-oscillator drift), rtcmem.bin (RTC
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


def drift_ms(t0, t1):
    """How much the RTC gains over the virtual interval [t0, t1] (ms). The ESP32's default deep-sleep clock
    is its internal ~150 kHz RC oscillator: a rate error of drift_ppm (thousands of ppm) plus a wander of
    wander_ppm over wander_period_s (temperature). Same formula as sim/board/runner.py rtc_gain_ms."""
    el = t1 - t0
    d = el * HW.get('drift_ppm', 0) // 1000000
    w = HW.get('wander_ppm', 0)
    if w:
        import math
        per = HW.get('wander_period_s', 86400) * 1000
        a = 2 * math.pi * (t0 % per) / per
        b = 2 * math.pi * (t1 % per) / per
        d += int(w * per / (2 * math.pi) * (math.cos(a) - math.cos(b)) / 1000000)
    return d


def in_window(key):
    t = vt()
    for a, b in SCN.get(key, ()):
        if a <= t < b:
            return True
    return False


def value(name, default=0.0):
    """A scenario quantity at the current virtual time: a number, base + amp * sin(2 pi t / period), or
    steps of [vt, value]."""
    import math
    spec = SCN.get('values', {}).get(name)
    if spec is None:
        return default
    if not isinstance(spec, dict):
        return float(spec)
    if 'steps' in spec:  # [[vt, value], ...]: the value of the last step at or before now (else base)
        v = spec.get('base', default)
        t = vt()
        for at, x in spec['steps']:
            if at <= t:
                v = x
        return float(v)
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

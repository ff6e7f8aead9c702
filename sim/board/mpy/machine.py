# Host shim for the ESP32 `machine` module, on the board's virtual clock (see _simboard.py).
from umachine import *  # noqa: F401,F403  (mem8, Signal, idle, ... of the unix port)
import os
import time

import _simboard as _sb

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_RTC_MEM_MAX = 2048


def reset_cause():
    # as MicroPython's ESP32 port reports it: a brown-out is folded into PWRON_RESET
    return _sb.HW.get('reset_cause', PWRON_RESET)


_RTC_RESET_STATE = 0x3FF48034  # ESP32 RTC_CNTL_RESET_STATE_REG: raw reset reason, PRO CPU bits 0-5


class _Mem32:
    """machine.mem32 for the one register the firmware reads (the raw reset reason); any other address
    would read the host process's memory, so it is refused."""

    def __getitem__(self, addr):
        if addr == _RTC_RESET_STATE:
            r = _sb.HW.get('rst_raw', 1)
            return r | (r << 6)  # PRO CPU and APP CPU reset reasons
        raise ValueError('mem32[0x%x] is not emulated' % addr)


mem32 = _Mem32()


def unique_id():
    # the ESP32's is its 6-byte base MAC address; here the hardware file's 'uid' (hex), else 6 bytes derived
    # from the board's name, so that every simulated board has its own, stable across boots
    uid = _sb.HW.get('uid')
    if uid:
        import binascii
        return binascii.unhexlify(uid)
    import hashlib
    return hashlib.sha256(_sb.HW.get('name', 'board').encode()).digest()[:6]


def freq(*a):
    return 160000000


def deepsleep(ms=0):
    _sb.end_process(ms)


def lightsleep(ms=0):
    time.sleep_ms(ms)


def reset():
    _sb.HW['reset_cause'] = HARD_RESET
    _sb.end_process(0)


def _civil(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


class RTC:
    """RTC driven by the virtual clock with the board's RC-oscillator drift; its memory persists in
    rtcmem.bin (survives deep sleep and resets, wiped by the runner on a power loss)."""

    def __init__(self, id=0):
        pass

    def _ms(self):
        hw = _sb.HW
        t0, t = hw.get('rtc_set_vt', 0), _sb.vt()
        return hw.get('rtc_set_val', 946684800000) + (t - t0) + _sb.drift_ms(t0, t)

    def datetime(self, t=None):
        if t is None:
            ms = self._ms()
            g = time.gmtime(ms // 1000)  # the unix port's epoch is 1970
            return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], (ms % 1000) * 1000)
        ms = (_civil(t[0], t[1], t[2]) * 86400 + t[4] * 3600 + t[5] * 60 + t[6]) * 1000 + t[7] // 1000
        _sb.HW['rtc_set_vt'] = _sb.vt()
        _sb.HW['rtc_set_val'] = ms
        _sb.write_json('hw.json', _sb.HW)

    def memory(self, data=None):
        p = _sb.DIR + '/rtcmem.bin'
        if data is None:
            try:
                with open(p, 'rb') as f:
                    return f.read()
            except OSError:
                return b''
        if len(data) > _RTC_MEM_MAX:
            raise ValueError('RTC memory holds %d bytes' % _RTC_MEM_MAX)
        with open(p + '.tmp', 'wb') as f:
            f.write(data)
        os.rename(p + '.tmp', p)


class WDT:
    """The runner enforces the timeout (it kills a wake that runs too long and restarts the board with
    reset cause WDT_RESET); here we only record it."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        _sb.truth('wdt %d' % timeout)

    def feed(self):
        pass


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self._v = value

    def init(self, *a, **k):
        pass

    def value(self, v=None):
        if v is not None:
            self._v = v
            return None
        if self._v is not None:
            return self._v
        return int(_sb.SCN.get('pins', {}).get(str(self.id), 1))

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    __call__ = value


def _crc8(b):
    c = 0xFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


class I2C:
    """An I2C bus with an emulated SHT3x at 0x44 whose readings follow the scenario's temp_c and rh."""

    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self._pending = None

    def scan(self):
        return [] if _sb.in_window('i2c_down') else [0x44]

    def _check(self, addr):
        if addr != 0x44 or _sb.in_window('i2c_down'):
            raise OSError(19)  # ENODEV: no ACK

    def writeto(self, addr, buf, stop=True):
        self._check(addr)
        cmd = bytes(buf)
        if cmd == b'\x24\x00':
            t = _sb.value('temp_c', 21.0)
            rh = _sb.value('rh', 45.0)
            st = max(0, min(65535, int(round((t + 45) * 65535 / 175))))
            srh = max(0, min(65535, int(round(rh * 65535 / 100))))
            a, b = bytes((st >> 8, st & 255)), bytes((srh >> 8, srh & 255))
            self._pending = a + bytes((_crc8(a),)) + b + bytes((_crc8(b),))
            _sb.truth('meas %d %.3f %.3f' % (_sb.vt(), t, rh))
        return len(cmd)

    def readfrom_into(self, addr, buf, stop=True):
        self._check(addr)
        if self._pending is None:
            raise OSError(5)
        n = min(len(buf), len(self._pending))
        buf[0:n] = self._pending[0:n]
        self._pending = None

    def readfrom(self, addr, n, stop=True):
        b = bytearray(n)
        self.readfrom_into(addr, b)
        return bytes(b)


class ADC:
    """ADC answering the scenario value named 'adc<pin>' in microvolts at the pin; on the scenario's
    "tag_pin" it reads the world's measurement counter (_simboard.tag) as that many millivolts (+ 0.5 mV, so
    the firmware's integer millivolts are exactly the number)."""
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=None):
        self.pin = getattr(pin, 'id', pin)

    def atten(self, a):
        pass

    def width(self, w):
        pass

    def read_uv(self):
        if self.pin == _sb.SCN.get('tag_pin'):
            return _sb.tag() * 1000 + 500
        return int(_sb.value('adc%d' % self.pin, 1.0) * 1000000)

    def read_u16(self):
        return min(65535, self.read_uv() * 65535 // 3100000)

    def read(self):
        return self.read_u16() >> 4

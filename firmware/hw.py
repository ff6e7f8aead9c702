# The hardware layer: everything board-specific sits here, behind small functions. On the host the
# shims in sim/board/ stand in for machine, network and esp32; the logic modules (codec, buffer,
# timebase, uplink) import nothing from the board.
import time
import machine
import network  # built into the ESP32 port; loaded here, on a clean heap, where it is a host shim
from micropython import const

_rtc = machine.RTC()
_wlan = None
_i2c = None
_sht = None
_adcs = []  # type: list[tuple[machine.ADC, float]]  # (input, divider factor), set by sensors_init


def board_id():
    """The id of a board without a configured one: 'esp32-' and its unique id (the base MAC) in hex."""
    import binascii
    return 'esp32-' + binascii.hexlify(machine.unique_id()).decode()


def rtc_tuple():
    return _rtc.datetime()


def mem_read():
    return _rtc.memory()


def mem_write(b):
    _rtc.memory(b)


def woke_from_sleep():
    return machine.reset_cause() == machine.DEEPSLEEP_RESET


def reset_cause():
    return machine.reset_cause()


_RESET_STATE = const(0x3FF48034)  # ESP32 RTC_CNTL_RESET_STATE_REG: raw reset reason, PRO CPU bits 0-5
_BROWN_OUT = const(15)  # RTCWDT_BROWN_OUT_RESET (ESP-IDF rom/rtc.h)


def brownout():
    """True on the boot after a brown-out reset. MicroPython's ESP32 port folds ESP_RST_BROWNOUT into
    PWRON_RESET (ports/esp32/modmachine.c), so read the chip's raw reset reason. The register address is
    the ESP32's (the S2/S3/C3 keep it elsewhere: there this says False)."""
    import sys
    m = getattr(sys.implementation, '_machine', '')  # e.g. 'Generic ESP32 module with ESP32'
    if 'ESP32S' in m or 'ESP32C' in m:
        return False
    try:
        return machine.mem32[_RESET_STATE] & 0x3F == _BROWN_OUT
    except (AttributeError, ValueError, OSError, IndexError):
        return False


def watchdog(ms):
    try:
        return machine.WDT(timeout=ms)
    except (AttributeError, ValueError):
        return None


def deepsleep(ms):
    machine.deepsleep(ms)


def sensors_init(cfg):
    global _i2c, _sht, _adcs
    from sht3x import SHT3x
    _i2c = machine.I2C(0, scl=machine.Pin(cfg['i2c_scl']), sda=machine.Pin(cfg['i2c_sda']), freq=100000)
    _sht = SHT3x(_i2c, cfg.get('sht_addr', 0x44))
    _adcs = []
    for name, pin, mul in cfg['adc']:
        a = machine.ADC(machine.Pin(pin))
        try:
            a.atten(machine.ADC.ATTN_11DB)  # 0..~3.1 V on an ESP32
        except AttributeError:
            pass
        _adcs.append((a, mul))


def sample(out):
    """Fill out (a list) with fixed-point values in the config's metric order; None where a sensor
    failed. Order: temp_c (x100), rh (x10), then each ADC input in millivolts."""
    try:
        if _sht is None:
            raise OSError(19)  # ENODEV: sensors_init() was not called
        t, rh = _sht.measure()
        out[0] = t
        out[1] = rh
    except OSError:
        out[0] = None
        out[1] = None
    i = 2
    for a, mul in _adcs:
        try:
            out[i] = int(a.read_uv() * mul) // 1000
        except OSError:
            out[i] = None
        i += 1
    return out


def wifi_connect(ssid, password, timeout_ms):
    """True once associated with an address, False after timeout_ms."""
    global _wlan
    _wlan = network.WLAN(network.STA_IF)
    _wlan.active(True)
    if _wlan.isconnected():
        return True
    try:
        _wlan.connect(ssid, password)
    except OSError:
        return False
    t0 = time.ticks_ms()
    while not _wlan.isconnected():
        if time.ticks_diff(time.ticks_ms(), t0) > timeout_ms:
            return False
        time.sleep_ms(50)
    return True


def wifi_dns():
    """The DNS server the Wi-Fi's DHCP gave us (an IPv4 literal), or None."""
    if _wlan is None:
        return None
    try:
        return _wlan.ifconfig()[3]
    except (OSError, IndexError):
        return None


def wifi_off():
    if _wlan is not None:
        try:
            _wlan.disconnect()
        except OSError:
            pass
        _wlan.active(False)

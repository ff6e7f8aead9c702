# Host shim for micropython-lib's `ntptime`, answering from the virtual clock (seconds since the port's
# epoch, as the real module does). The firmware itself uses sntp.py for millisecond resolution.
import _simboard as _sb
import machine

host = 'pool.ntp.org'
timeout = 1


def time():  # noqa: F811
    if _sb.in_window('wifi_down'):
        raise OSError(110)
    return _sb.vt() // 1000


def settime():
    t = time()
    import utime
    tm = utime.gmtime(t)
    machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

# Host shim for `network`: a station interface that is up or down per the scenario's "wifi_down"
# windows of virtual time. The host's own networking carries the traffic when it is "up".
import time

import _simboard as _sb

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, iface=STA_IF):
        self._active = False
        self._want = False

    def active(self, on=None):
        if on is None:
            return self._active
        if bool(on) != self._active:
            _sb.truth('radio %s %d' % ('on' if on else 'off', _sb.vt()))  # radio-on time, for the power budget
        self._active = bool(on)
        if not on:
            self._want = False

    def connect(self, ssid=None, key=None, **kw):
        if not self._active:
            raise OSError('WLAN not active')
        self._want = True

    def disconnect(self):
        self._want = False

    def isconnected(self):
        return self._active and self._want and not _sb.in_window('wifi_down')

    def status(self, *a):
        return STAT_GOT_IP if self.isconnected() else STAT_CONNECTING

    def ifconfig(self, *a):
        return ('127.0.0.1', '255.0.0.0', '127.0.0.1', '127.0.0.1')

    def config(self, *a, **k):
        return None

# Time on the board: the RTC across deep sleep, NTP when online, Unix milliseconds out.
#
# - The port's epoch is whatever time.gmtime(0) says (2000-01-01 on an ESP32, 1970 on the unix port);
#   conversions go through EPOCH_S, the Unix time of that epoch, never an assumed constant.
# - Quality of a new reading: 's' when the clock was synced within max_age, 'n' (stored only; sent as
#   'u' or 'c') when the RTC has not been synced since it lost time at power-on, 'u' when the last sync
#   is older than max_age.
# - At the first sync after the RTC lost time, offset = ntp - rtc is remembered for the boots of that
#   clock era (a flash file, so it survives a later power loss); readings stored as 'n' are sent with
#   t + offset and 'c'. Until an offset is known they are held back while their time is implausible
#   (before MIN_T: the gateway would dead-letter them), and sent as 'u' otherwise.
# - Drift: between two syncs at least 10 minutes apart, (ntp - rtc) / elapsed gives the RTC's rate
#   error; it is smoothed, applied to now() between syncs, and reported in the status (drift_ppm).
import time
from micropython import const

MIN_T = const(1577836800000)  # 2020-01-01T00:00:00Z: no synced clock gives an earlier time
_COR = 'clock.cor'
_COR_KEEP = const(8)


def days_from_civil(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_e = time.gmtime(0)
EPOCH_S = days_from_civil(_e[0], _e[1], _e[2]) * 86400 + _e[3] * 3600 + _e[4] * 60 + _e[5]
del _e


def tuple_to_ms(tp):
    """RTC datetime tuple (y, mo, d, wd, h, mi, s, us) -> Unix ms."""
    s = days_from_civil(tp[0], tp[1], tp[2]) * 86400 + tp[4] * 3600 + tp[5] * 60 + tp[6]
    return s * 1000 + tp[7] // 1000


def ms_to_tuple(ms):
    g = time.gmtime(ms // 1000 - EPOCH_S)
    return (g[0], g[1], g[2], g[6], g[3], g[4], g[5], (ms % 1000) * 1000)


def load_corrections():
    out = []
    try:
        with open(_COR) as f:
            for line in f:
                p = line.split()
                if len(p) == 3:
                    out.append((int(p[0]), int(p[1]), int(p[2])))
    except (OSError, ValueError):
        pass
    return out


class Clock:
    def __init__(self, st, hw, max_age_ms):
        self.st = st
        self.hw = hw
        self.max_age = max_age_ms
        self._cor = None

    def rtc_ms(self):
        return tuple_to_ms(self.hw.rtc_tuple())

    def synced(self):
        return bool(self.st.flags & 1)

    def now(self):
        """(t_ms, quality) for a reading taken now."""
        raw = self.rtc_ms()
        st = self.st
        if not st.flags & 1:
            return raw, 'n'
        age = raw - st.sync_rtc
        t = raw + age * st.drift_ppb // 1000000000
        return t, ('s' if age <= self.max_age else 'u')

    def sync(self, true_ms):
        """Adopt an NTP time (Unix ms, for this instant). Returns the step applied to the RTC (ms)."""
        st = self.st
        raw = self.rtc_ms()
        step = true_ms - raw
        if not st.flags & 1:
            self._remember(st.era_boot, st.boot, step)
        else:
            el = raw - st.sync_rtc
            if el >= 600000:
                d = step * 1000000000 // el
                st.drift_ppb = d if st.drift_ppb == 0 else (st.drift_ppb + d) // 2
        self.hw.rtc_set(ms_to_tuple(true_ms + (self.rtc_ms() - raw)))
        st.flags |= 1
        st.sync_rtc = true_ms
        return step

    def _remember(self, lo, hi, off):
        cor = [c for c in self.corrections() if not (c[0] == lo)]
        cor.append((lo, hi, off))
        cor = cor[-_COR_KEEP:]
        with open(_COR + '.tmp', 'w') as f:
            for c in cor:
                f.write('%d %d %d\n' % c)
        import os
        os.rename(_COR + '.tmp', _COR)
        self._cor = cor

    def corrections(self):
        if self._cor is None:
            self._cor = load_corrections()
        return self._cor

    def fix(self, r):
        """A stored reading as it goes on the wire: 'n' becomes 'c' with the era's offset, or 'u'.
        None when it must wait for a sync (its time would be rejected as too old)."""
        if r[3] != 'n':
            return r
        for lo, hi, off in self.corrections():
            if lo <= r[0] <= hi:
                return (r[0], r[1], r[2] + off, 'c', r[4])
        if r[2] < MIN_T:
            return None
        return (r[0], r[1], r[2], 'u', r[4])

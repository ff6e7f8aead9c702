# Time on the board. The RTC is never set: it is a free-running counter (in the port's epoch, converted
# with EPOCH_S from time.gmtime(0), never an assumed constant), and every reading is stored with the raw
# RTC time (quality 'n'). Unix time comes from sync points (raw RTC ms, Unix ms) taken from NTP, and a
# reading is mapped to Unix time when it is sent:
#
# - between two sync points: interpolated ('s'). The ESP32's default deep-sleep clock is an RC
#   oscillator that runs percent fast or slow and wanders with temperature; interpolation cancels its rate
#   error, so a board that syncs at every publishing wake sends readings timed to ~the NTP error.
# - after the last point: extrapolated at the last interval's rate ('s' up to max_age, then 'u').
# - before the first point of its clock era: extrapolated back ('c': corrected when the sync came).
# While an era has a single point its rate is unknown (percent, on an RC clock): its readings wait for the
# second point (the next publishing wake syncs again), for at most max_age.
# - a point from the gateway (no NTP) makes the readings it times 'u'.
#
# A clock era is a stretch of boots over which the RTC ran without being reset: it starts at power-on
# (RTC memory lost) or when the RTC is found to have gone backwards (a reset that cleared it, or the
# REPL). Each era's points are kept on flash ('clock.cor'), so readings of an earlier era still on
# flash can be mapped after a power loss; a reading of an era that never got a point can never be timed:
# fix() returns False and the caller drops and counts it.
#
# NTP answers are checked before they are used: sntp.py refuses malformed and unsynchronised replies,
# and sync() refuses an answer further from the prediction than the RTC can drift (MAX_CHANGE_PPM of the
# time since the last point, MAX_RATE_PPM while the rate is unknown). Answers that keep disagreeing with
# the prediction but agree with each other (ADOPT_N of them over at least ADOPT_MS, longer than a server
# lies for a while) replace the points: then the earlier answers (the first of an era cannot be checked),
# or the RTC, were wrong. The rate estimate is clamped to MAX_RATE_PPM.
import time
from micropython import const

from state import NPTS

MIN_T = const(1577836800000)  # 2020-01-01T00:00:00Z: no synced clock gives an earlier time
MAX_RATE_PPM = const(100000)  # an RC oscillator is within a few percent; 10 % is not a clock
MAX_CHANGE_PPM = const(15000)  # how far its rate can move between two syncs (temperature, Wi-Fi heat)
TOL_MS = const(2000)  # NTP error and reading latency
MIN_INTERVAL_MS = const(60000)  # closer sync points add noise, not information
ADOPT_MS = const(21600000)  # 6 h
ADOPT_N = const(6)
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


def rate_ppb(ra, ta, rb, tb):
    """How fast the RTC ran between two points (ppb, + = fast), clamped to MAX_RATE_PPM."""
    dt = tb - ta
    if dt <= 0:
        return 0
    d = ((rb - ra) - dt) * 1000000000 // dt
    lim = MAX_RATE_PPM * 1000
    return -lim if d < -lim else (lim if d > lim else d)


def map_time(pts, raw, ppb, max_age):
    """(Unix ms, quality) of raw RTC ms through the sync points pts [(raw, true, from_gateway)]:
    interpolated between two points, else extrapolated from the nearest point at the rate ppb (the rate
    over all the points kept: one bad point moves it little)."""
    n = len(pts)
    if n >= 2 and pts[0][0] <= raw <= pts[-1][0]:
        i = 0
        while i < n - 2 and raw > pts[i + 1][0]:
            i += 1
        ra, ta, ga = pts[i]
        rb, tb, gb = pts[i + 1]
        t = ta + (raw - ra) * (tb - ta) // (rb - ra)
        return t, ('u' if ga or gb else 's')
    r0, t0, g = pts[-1] if raw > pts[-1][0] else pts[0]
    el = raw - r0
    t = t0 + el - el * ppb // (1000000000 + ppb)
    if el < 0:
        q = 'c'
    else:
        q = 's' if el <= max_age else 'u'
    return t, ('u' if g else q)


def load_eras():
    """[(lo boot, hi boot, points)] of the clock eras kept on flash."""
    out = []
    try:
        with open(_COR) as f:
            for line in f:
                p = [int(x) for x in line.split()]
                if len(p) >= 5 and (len(p) - 3) % 2 == 0:
                    pts = []
                    for i in range((len(p) - 3) // 2):
                        pts.append((p[3 + 2 * i], p[4 + 2 * i], bool(p[2] >> i & 1)))
                    out.append((p[0], p[1], pts))
    except (OSError, ValueError):
        pass
    return out


class Clock:
    def __init__(self, st, hw, max_age_ms):
        self.st = st
        self.hw = hw
        self.max_age = max_age_ms
        self._eras = None

    def raw(self):
        return tuple_to_ms(self.hw.rtc_tuple())

    def went_back(self):
        """At the start of a wake: True when the RTC reads earlier than at the last wake (a reset
        cleared it, or it was set back), so the points no longer describe it. The era ends here (its
        points are kept on flash); the caller starts a new boot, and begin_era() a new era."""
        raw = self.raw()
        st = self.st
        if st.last_raw and raw < st.last_raw - TOL_MS:
            if st.npts:
                self.save_era()
            return True
        return False

    def begin_era(self):
        st = self.st
        st.era_boot = st.boot
        st.set_points([])
        st.cand_n = 0
        st.last_raw = self.raw()

    def stamp(self):
        """Raw RTC ms for a reading taken now (stored with quality 'n', mapped when sent)."""
        raw = self.raw()
        if raw > self.st.last_raw:
            self.st.last_raw = raw
        return raw

    def synced(self):
        """An NTP point, recent enough that a reading taken now would be 's'."""
        pts = self.st.points()
        if not pts or pts[-1][2]:
            return False
        return self.raw() - pts[-1][0] <= self.max_age

    def need_sync(self, every_ms):
        pts = self.st.points()
        if len(pts) < 2 or pts[-1][2]:
            return True  # the rate is not known yet: sync at every publishing wake until it is
        return self.raw() - pts[-1][0] >= every_ms

    def now(self):
        """(t_ms, quality) for this instant; ('n') while the era has no point."""
        raw = self.raw()
        pts = self.st.points()
        if not pts:
            return raw, 'n'
        return map_time(pts, raw, self.st.drift_ppb, self.max_age)

    def sync(self, true_ms, raw, rtt=0, gateway=False):
        """Offer a time (Unix ms at raw RTC ms). Returns what was done: 'first', 'ok', 'close', 'kept',
        'implausible', 'conflict' or 'adopted'."""
        st = self.st
        if true_ms < MIN_T:
            return 'implausible'
        pts = st.points()
        if not pts:
            st.set_points([(raw, true_ms, gateway)])
            self.save_era()
            return 'first'
        last = pts[-1]
        el = raw - last[0]
        pred = map_time(pts, raw, st.drift_ppb, 1 << 62)[0]
        known = len(pts) >= 2 and not (pts[-1][2] or pts[-2][2])
        tol = TOL_MS + rtt + (el if el > 0 else -el) * (MAX_CHANGE_PPM if known else MAX_RATE_PPM) // 1000000
        if gateway or last[2]:
            tol += 5 * TOL_MS  # the gateway's time crosses a broker and a queue
        off = true_ms - pred
        if (off if off > 0 else -off) > tol:
            if last[2] and not gateway:
                pts = []  # an NTP answer overrules times that came from the gateway
            elif gateway:
                return 'conflict'  # and the gateway's time never overrules NTP
            else:
                return self._conflict(raw, true_ms)
        st.cand_n = 0
        if gateway and pts and not last[2] and el <= self.max_age:
            return 'kept'  # the gateway's time adds nothing to a recent NTP time
        if not gateway:
            pts = [p for p in pts if not p[2]]
        if pts and raw - pts[-1][0] < MIN_INTERVAL_MS:
            return 'close'
        pts.append((raw, true_ms, gateway))
        pts = pts[-NPTS:]
        if len(pts) >= 2:
            a, b = pts[0], pts[-1]
            st.drift_ppb = rate_ppb(a[0], a[1], b[0], b[1])
        st.set_points(pts)
        self.save_era()
        return 'ok'

    def _conflict(self, raw, true_ms):
        st = self.st
        if st.cand_n:
            d = (true_ms - st.cand_true) - (raw - st.cand_raw)
            el = raw - st.cand_raw
            if (d if d > 0 else -d) <= TOL_MS + (el if el > 0 else -el) * MAX_RATE_PPM // 1000000:
                st.cand_n += 1
                if st.cand_n >= ADOPT_N and el >= ADOPT_MS:
                    st.set_points([(st.cand_raw, st.cand_true, False), (raw, true_ms, False)])
                    st.drift_ppb = rate_ppb(st.cand_raw, st.cand_true, raw, true_ms)
                    st.cand_n = 0
                    self.save_era()
                    return 'adopted'
                return 'conflict'
        st.cand_n, st.cand_raw, st.cand_true = 1, raw, true_ms
        return 'conflict'

    def eras(self):
        if self._eras is None:
            self._eras = load_eras()
        return self._eras

    def save_era(self):
        """This era's points to flash (written to a temp file and renamed)."""
        st = self.st
        pts = st.points()
        eras = [e for e in self.eras() if e[0] != st.era_boot]
        eras.append((st.era_boot, st.boot, pts))
        eras = eras[-_COR_KEEP:]
        with open(_COR + '.tmp', 'w') as f:
            for lo, hi, ps in eras:
                g = 0
                for i in range(len(ps)):
                    if ps[i][2]:
                        g |= 1 << i
                f.write('%d %d %d' % (lo, hi, g))
                for p in ps:
                    f.write(' %d %d' % (p[0], p[1]))
                f.write('\n')
        import os
        os.rename(_COR + '.tmp', _COR)
        self._eras = eras

    def fix(self, r):
        """A stored reading as it goes on the wire: a raw 'n' reading mapped through its era's points.
        None: hold it (its era, the current one, has no point yet). False: its time can never be known
        (an earlier era without a point, or one that maps before 2020): drop and count it."""
        if r[3] != 'n':
            return r
        st = self.st
        if r[0] >= st.era_boot:
            pts = st.points()
            if not pts:
                return None
            if len(pts) == 1 and self.raw() - pts[0][0] < self.max_age:
                return None  # the RTC's rate is not known yet: the next sync (or max_age) tells it
        else:
            pts = None
            for lo, hi, ps in self.eras():
                if lo <= r[0] <= hi and ps:
                    pts = ps
            if pts is None:
                return False
        t, q = map_time(pts, r[2], st.drift_ppb, self.max_age)
        if t < MIN_T:
            return False
        return (r[0], r[1], t, q, r[4])

# The state that lives in RTC memory across deep sleep: a header plus the reading ring, in one
# preallocated bytearray, saved whole with a CRC. RTC memory is lost on power-on, so after a power loss
# load() fails and the caller starts fresh (the boot counter lives in flash, see app.py).
#
# Header (little endian): a fixed prefix that never moves, then the fields of _FIELDS in order, then a
# crc32 of the header before it and the ring.
#   0 H magic   2 B layout   3 B record size   4 H header size (where the ring starts)
#   6 H ring head   8 H ring count   10 H ring capacity   12.. _FIELDS   HDR-4 I crc32
# To add a field, append 'name:type' to _FIELDS and name it in State.__init__, and bump LAYOUT: an image of another
# layout is not loaded (a firmware update then starts with a fresh state, like a power-on).
import struct
from binascii import crc32
from micropython import const

MAGIC = const(0xEC17)
LAYOUT = const(3)
NPTS = const(4)  # clock sync points kept (timebase.py)

# name: type, in header order
_FIELDS = (
    'boot:I seq:I wakes:I dropped:I '
    'flags:H '       # bit0: the metric count changed and buffered readings were dropped (app.py)
    'era_boot:I '    # first boot of the RTC's current clock era (timebase.py)
    'fails:I '       # consecutive failed uplinks
    'last_t:q '      # t of the newest reading
    'last_raw:q '    # raw RTC ms at the newest wake: a smaller one later means the RTC went back
    'drift_ppb:i '   # the RTC's rate error over the sync points kept (ppb, + = fast), clamped
    'npts:B grades:B '  # sync points in use; bit i set: point i came from the gateway
    'pr0:q pt0:q pr1:q pt1:q pr2:q pt2:q pr3:q pt3:q '  # sync points: raw RTC ms -> Unix ms
    'cand_n:B cand_raw:q cand_true:q '  # conflicting NTP answers that agree with each other
    'ntp_fails:B ntp_skip:H '  # NTP backoff: consecutive failures, publishing wakes to skip
    'brownouts:H untimed:I '   # brown-out resets seen; readings dropped as un-timeable
    'radio_skip:H '  # wakes left without the radio after a brown-out
    'gw_skip:H '     # publishing wakes before the gateway is asked for the time again (it did not answer)
    'net_skip:H '    # wakes left with the radio off (uplink backoff, see backoff.py)
    'ip_age:H ip:I'  # wakes since the broker's address was looked up, that IPv4 address (0: none; uplink.py)
).split()
_NAMES = [f.split(':')[0] for f in _FIELDS]
_PRE = '<HBBHHHH'
_FMT = '<' + ''.join([f.split(':')[1] for f in _FIELDS])
del _FIELDS
_P = const(12)  # size of _PRE
HDR = _P + struct.calcsize(_FMT) + 4


class State:
    def __init__(self, size, rec_size, buf=None):
        """buf: a bytearray of at least size bytes to use (allocated early in a wake, before the heap
        fragments), else one is allocated."""
        self.size = size
        self.rec = rec_size
        self.cap = (size - HDR) // rec_size
        n = HDR + self.cap * rec_size
        if buf is None or len(buf) < n:
            buf = bytearray(n)
        self.buf = memoryview(buf)[0:n]
        self.mv = self.buf
        # the fields of _FIELDS (written out so that a type checker knows them; fresh() zeroes them all)
        self.boot = self.seq = self.wakes = self.dropped = self.flags = self.era_boot = self.fails = 0
        self.last_t = self.last_raw = self.drift_ppb = self.npts = self.grades = 0
        self.pr0 = self.pt0 = self.pr1 = self.pt1 = self.pr2 = self.pt2 = self.pr3 = self.pt3 = 0
        self.cand_n = self.cand_raw = self.cand_true = self.ntp_fails = self.ntp_skip = 0
        self.brownouts = self.untimed = self.radio_skip = self.gw_skip = 0
        self.net_skip = self.ip_age = self.ip = 0
        self.head = self.count = 0
        self.fresh()

    def fresh(self):
        for name in _NAMES:
            setattr(self, name, 0)
        self.head = 0
        self.count = 0

    def _crc(self):
        return crc32(self.mv[HDR:], crc32(self.mv[0:HDR - 4])) & 0xFFFFFFFF

    @staticmethod
    def peek(raw):
        """(layout, record size, count) of an RTC-memory image whose CRC checks, else None: what a
        configuration change would throw away."""
        if raw is None or len(raw) < _P + 4:
            return None
        magic, layout, rec, hdr, _, count, cap = struct.unpack_from(_PRE, raw, 0)
        if magic != MAGIC or hdr < _P + 4 or hdr + cap * rec != len(raw):
            return None
        mv = memoryview(raw)
        if struct.unpack_from('<I', raw, hdr - 4)[0] != crc32(mv[hdr:], crc32(mv[0:hdr - 4])) & 0xFFFFFFFF:
            return None
        return layout, rec, count

    def load(self, raw):
        """Adopt raw RTC memory; False (and a fresh state) when it is missing, foreign or damaged."""
        self.fresh()
        if raw is None or len(raw) != len(self.buf):
            return False
        self.buf[:] = raw
        magic, layout, rec, hdr, head, count, cap = struct.unpack_from(_PRE, self.buf, 0)
        if magic != MAGIC or layout != LAYOUT or rec != self.rec or hdr != HDR or cap != self.cap:
            return False
        if struct.unpack_from('<I', self.buf, HDR - 4)[0] != self._crc() or count > cap or head >= max(cap, 1):
            return False
        f = struct.unpack_from(_FMT, self.buf, _P)
        for i in range(len(_NAMES)):
            setattr(self, _NAMES[i], f[i])
        self.head, self.count = head, count
        return True

    def pack(self):
        struct.pack_into(_PRE, self.buf, 0, MAGIC, LAYOUT, self.rec, HDR, self.head, self.count, self.cap)
        struct.pack_into(_FMT, self.buf, _P, *[getattr(self, n) for n in _NAMES])
        struct.pack_into('<I', self.buf, HDR - 4, self._crc())
        return self.buf

    def slot(self, i):
        """Offset of ring slot i (0..cap-1)."""
        return HDR + i * self.rec

    def points(self):
        """The clock's sync points [(raw, true, from_gateway)], oldest first."""
        out = []
        for i in range(self.npts):
            out.append((getattr(self, 'pr%d' % i), getattr(self, 'pt%d' % i), bool(self.grades >> i & 1)))
        return out

    def set_points(self, pts):
        pts = pts[-NPTS:]
        self.npts = len(pts)
        self.grades = 0
        for i in range(NPTS):
            p = pts[i] if i < len(pts) else (0, 0, False)
            setattr(self, 'pr%d' % i, p[0])
            setattr(self, 'pt%d' % i, p[1])
            if p[2]:
                self.grades |= 1 << i

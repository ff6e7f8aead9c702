# The state that lives in RTC memory across deep sleep: a fixed header plus the reading ring, in one
# preallocated bytearray, saved whole with a CRC. RTC memory is lost on power-on, so after a power loss
# load() fails and the caller starts fresh (the boot counter lives in flash, see app.py).
#
# Header layout (little endian, HDR bytes):
#   0 H magic   2 B layout   3 B rec_size   4 I boot   8 I seq   12 I wakes   16 I dropped
#   20 H ring head   22 H ring count   24 H ring cap   26 H flags (bit0 clock synced in this era)
#   28 q rtc ms of the last sync   36 i drift (ppb)   40 I era boot (boot whose clock started unsynced)
#   44 I consecutive failed uplinks   48 q t of the newest reading
#   56 H wakes left with the radio off (uplink backoff, see backoff.py)
#   58 H wakes since the broker's address was looked up   60 I that IPv4 address (0: none; see uplink.py)
#   64 I crc32 of [0:64] + ring
# 68 bytes: with the default four metrics (33-byte records) 2048 bytes still hold 60 readings.
import struct
from binascii import crc32
from micropython import const

MAGIC = const(0xEC17)
LAYOUT = const(2)
HDR = const(68)
_CRC = const(64)
FLAG_SYNCED = const(1)

_FMT = '<HBBIIIIHHHHqiIIqHHI'


class State:
    def __init__(self, size, rec_size):
        self.size = size
        self.rec = rec_size
        self.cap = (size - HDR) // rec_size
        self.buf = bytearray(HDR + self.cap * rec_size)
        self.mv = memoryview(self.buf)
        self.fresh()

    def fresh(self):
        self.boot = 0
        self.seq = 0
        self.wakes = 0
        self.dropped = 0
        self.head = 0
        self.count = 0
        self.flags = 0
        self.sync_rtc = 0
        self.drift_ppb = 0
        self.era_boot = 0
        self.fails = 0
        self.last_t = 0
        self.net_skip = 0
        self.ip_age = 0
        self.ip = 0

    def _crc(self):
        return crc32(self.mv[HDR:], crc32(self.mv[0:_CRC])) & 0xFFFFFFFF

    def load(self, raw):
        """Adopt raw RTC memory; False (and a fresh state) when it is missing, foreign or damaged."""
        self.fresh()
        if raw is None or len(raw) != len(self.buf):
            return False
        self.buf[:] = raw
        f = struct.unpack_from(_FMT, self.buf, 0)
        if f[0] != MAGIC or f[1] != LAYOUT or f[2] != self.rec or f[9] != self.cap:
            return False
        if struct.unpack_from('<I', self.buf, _CRC)[0] != self._crc():
            return False
        (_, _, _, self.boot, self.seq, self.wakes, self.dropped, self.head, self.count, _, self.flags,
         self.sync_rtc, self.drift_ppb, self.era_boot, self.fails, self.last_t, self.net_skip, self.ip_age,
         self.ip) = f
        return True

    def pack(self):
        struct.pack_into(_FMT, self.buf, 0, MAGIC, LAYOUT, self.rec, self.boot, self.seq, self.wakes,
                         self.dropped, self.head, self.count, self.cap, self.flags, self.sync_rtc,
                         self.drift_ppb, self.era_boot, self.fails, self.last_t, self.net_skip, self.ip_age,
                         self.ip)
        struct.pack_into('<I', self.buf, _CRC, self._crc())
        return self.buf

    def slot(self, i):
        """Offset of ring slot i (0..cap-1)."""
        return HDR + i * self.rec

# Reading buffer: a fixed ring in RTC memory (state.State) that spills to an append-only log on flash
# when full. A reading leaves the buffer only when consume() is called, i.e. after the broker's PUBACK.
#
# Record: <IIqB + one int32 per metric: boot, seq, t (ms), quality byte, fixed-point values
# (ABSENT marks a failed sensor). Flash slot = record + crc32.
#
# Power-loss safety on flash: the log file is only ever appended to; each slot carries its own CRC, so a
# torn last slot is skipped on reading, and the next append starts at the next slot boundary. How far the
# log has been acknowledged lives in a separate small file "gen off" replaced atomically (write a temp
# file, rename over). Dropping the consumed prefix means starting a new generation: write the new log (if
# anything is left), commit "gen+1 0" with the rename, then delete the old log. At start, logs of other
# generations are leftovers of an interrupted rotation and are removed. A watchdog reset between a spill
# and the RTC save can send a reading twice; the gateway removes duplicates by (device, boot, seq).
#
# Overflow policy: the flash log holds at most log_max readings; beyond that the OLDEST are discarded
# (the newest data is kept, from the ring too when log_max is smaller than the ring), and each discarded
# reading adds one to the discard counter (status "dropped").
#
# The ack file also records the record size: a log written with another metric count is not misread
# (its readings are counted as discarded: FlashLog.discarded; app.py reports it).
import os
import struct
from binascii import crc32
from micropython import const

ABSENT = const(-2147483648)
_ACK = 'buf.ack'
_ACK_TMP = 'buf.ack.tmp'


def rec_size(nmetrics):
    return 17 + 4 * nmetrics


def _exists(p):
    try:
        os.stat(p)
        return True
    except OSError:
        return False


def _size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return 0


class FlashLog:
    def __init__(self, rec, log_max):
        self.rec = rec
        self.slot = rec + 4
        self.max = log_max
        self.sbuf = bytearray(self.slot)
        self.gen, self.off = 0, 0
        self.discarded = 0
        rec_was = rec
        try:
            with open(_ACK) as f:
                p = f.read().split()
            self.gen, self.off = int(p[0]), int(p[1])
            if len(p) > 2:
                rec_was = int(p[2])
        except (OSError, ValueError, IndexError):
            self._commit(self.gen, self.off)  # from the start on, the ack file names the record size
        if rec_was != rec:  # written with another metric count: count what it held, start a new log
            n = _size(self.path()) - self.off
            self.discarded = max(0, (n + rec_was + 3) // (rec_was + 4))
            self._commit(self.gen + 1, 0)
        keep = self.path()
        for name in os.listdir():
            if name.startswith('buf.') and name.endswith('.log') and name != keep:
                os.remove(name)
        if _exists(_ACK_TMP):
            os.remove(_ACK_TMP)

    def path(self, gen=None):
        return 'buf.%d.log' % (self.gen if gen is None else gen)

    def end(self):
        """End of the last slot (a torn tail rounds up to a whole slot)."""
        n = _size(self.path())
        return (n + self.slot - 1) // self.slot * self.slot

    def pending(self):
        return max(0, (self.end() - self.off) // self.slot)

    def _commit(self, gen, off):
        with open(_ACK_TMP, 'w') as f:
            f.write('%d %d %d\n' % (gen, off, self.rec))
        os.rename(_ACK_TMP, _ACK)
        self.gen, self.off = gen, off

    def append(self, src, starts):
        """Append records src[o:o+rec] for o in starts, in one write session."""
        p = self.path()
        n = _size(p)
        with open(p, 'ab') as f:
            pad = (-n) % self.slot
            if pad:
                f.write(bytes(pad))  # torn tail from a power loss: start on a slot boundary
            sb = self.sbuf
            for o in starts:
                sb[0:self.rec] = src[o:o + self.rec]
                struct.pack_into('<I', sb, self.rec, crc32(memoryview(sb)[0:self.rec]) & 0xFFFFFFFF)
                f.write(sb)

    def consume(self, n):
        off = self.off + n * self.slot
        end = self.end()
        if off >= end:
            old = self.path()
            self._commit(self.gen + 1, 0)
            if _exists(old):
                os.remove(old)
        elif off >= self.max * self.slot:
            self._compact(off, end)
        else:
            self._commit(self.gen, off)

    def _compact(self, off, end):
        old, new = self.path(), self.path(self.gen + 1)
        with open(old, 'rb') as fi, open(new, 'wb') as fo:
            fi.seek(off)
            while True:
                k = fi.readinto(self.sbuf)
                if not k:
                    break
                fo.write(memoryview(self.sbuf)[0:k])
        self._commit(self.gen + 1, 0)
        os.remove(old)

    def records(self, limit):
        """Yield (index, record memoryview or None when the slot is damaged), oldest first."""
        p = self.path()
        if not _exists(p):
            return
        mv = memoryview(self.sbuf)
        with open(p, 'rb') as f:
            f.seek(self.off)
            i = 0
            while i < limit:
                k = f.readinto(self.sbuf)
                if k != self.slot:
                    if k:
                        yield i, None  # torn final slot
                    return
                ok = struct.unpack_from('<I', self.sbuf, self.rec)[0] == crc32(mv[0:self.rec]) & 0xFFFFFFFF
                yield i, (mv[0:self.rec] if ok else None)
                i += 1


class Buffer:
    def __init__(self, st, nmetrics, log_max, save):
        self.st = st
        self.nm = nmetrics
        self.fmt = '<IIqB' + 'i' * nmetrics
        self.rec = rec_size(nmetrics)
        self.log = FlashLog(self.rec, log_max)
        self.save = save  # writes st to RTC memory

    def fill(self):
        return self.st.count + self.log.pending()

    def capacity(self):
        return self.st.cap + self.log.max

    def append(self, b, s, t, q, vals):
        """Store one reading; spills the ring to flash first when it is full."""
        st = self.st
        if st.count >= st.cap:
            self.spill()
        i = (st.head + st.count) % st.cap
        v = [ABSENT if x is None else x for x in vals]
        struct.pack_into(self.fmt, st.buf, st.slot(i), b, s, t, ord(q), *v)
        st.count += 1
        self.save()

    def spill(self):
        st = self.st
        if not st.count:
            return
        over = self.log.pending() + st.count - self.log.max
        if over > 0:  # overflow: discard the oldest, on flash first, then from the ring
            nl = min(over, self.log.pending())
            if nl:
                self.log.consume(nl)
            nr = over - nl
            if nr:
                st.head = (st.head + nr) % st.cap
                st.count -= nr
            st.dropped += over
        if st.count:
            self.log.append(st.buf, [st.slot((st.head + k) % st.cap) for k in range(st.count)])
        st.head = 0
        st.count = 0
        self.save()

    def decode(self, mv):
        f = struct.unpack_from(self.fmt, mv, 0)
        return f[0], f[1], f[2], chr(f[3]), [None if x == ABSENT else x for x in f[4:]]

    def pending(self, limit=64):
        """Yield (source, record) oldest first: source 0 for the flash log, 1 for the ring. A damaged
        flash slot yields record None (it is still consumed with its neighbours)."""
        n = 0
        for _, mv in self.log.records(limit):
            yield 0, (None if mv is None else self.decode(mv))
            n += 1
        st = self.st
        k = 0
        while n < limit and k < st.count:
            yield 1, self.decode(st.mv[st.slot((st.head + k) % st.cap):])
            k += 1
            n += 1

    def consume(self, nlog, nring):
        if nlog:
            self.log.consume(nlog)
        if nring:
            st = self.st
            st.head = (st.head + nring) % st.cap
            st.count -= nring
            if not st.count:
                st.head = 0
            self.save()

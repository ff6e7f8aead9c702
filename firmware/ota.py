# Updates over the air: fetch a new build over MQTT, check every file's sha256, stage it in a directory of
# its own, and switch to it with one atomic rename (otaboot.py then runs it, on trial, and rolls back by
# itself if it does not publish within `ota_trials` wakes).
#
# What the gateway's side (edgekit-ota publish-build) leaves on the broker, all retained:
#   <prefix>/_gateway/ota/manifest[/<device>]  {"v":1,"version":"0.2.0","build":"<sha256 of the index>",
#                                               "size":<index bytes>,"chunk":1024}  (a board's own wins)
#   <prefix>/_gateway/ota/f/<sha256[:16]>/<k>   chunk k (bytes k*chunk ..) of the file with that hash
# The index is a file too (its hash is the build id): one line per file, '<name> <size> <sha256>'.
#
# Chunks come as small retained messages (four subscriptions in flight), each read into one buffer (the
# wake's message buffer, idle once the readings are out) and written to flash at once, so the download needs
# no heap in proportion to the build; it goes on at the next publishing wake where a wake's time ran out (a
# file's chunks are appended; a file is checked by reading it back from flash). Staging: the directory not in
# use (fwa/ or fwb/) is emptied and named for the build (.want), filled, checked, and only then fw.sel is
# replaced (tmp + rename): a power loss at any step leaves the running build selected, or the new one whole.
import gc
import os
import time
from binascii import hexlify
from micropython import const

import otaboot

SLOTS = ('fwa', 'fwb')
_WINDOW = const(4)  # chunk subscriptions in flight
_MARGIN_MS = const(6000)  # stop fetching this long before the wake's end (status, disconnect, sleep)


def _read(name):
    try:
        with open(name) as f:
            return f.read()
    except OSError:
        return None


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def sha256_file(path, buf):
    import hashlib
    h = hashlib.sha256()
    mv = memoryview(buf)
    with open(path, 'rb') as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
    return hexlify(h.digest()).decode()


def _rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + '/' + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
            try:
                os.rmdir(p)
            except OSError:
                pass


def refused():
    """(build, version, reason) of the build this board refuses (rolled back, or failed its hashes)."""
    s = _read(otaboot.BAD)
    if not s:
        return None
    p = s.split(None, 2)
    if len(p) < 3:
        return None
    return p[0], p[1], p[2].strip()


def refuse(build, version, reason):
    with open(otaboot.BAD + '.tmp', 'w') as f:
        f.write('%s %s %s\n' % (build, version, reason))
    os.rename(otaboot.BAD + '.tmp', otaboot.BAD)


def forgive():
    """The `update` command: try a refused build again."""
    try:
        os.remove(otaboot.BAD)
    except OSError:
        pass


class Updater:
    def __init__(self, up, cfg, left_ms, feed=None, rbuf=None):
        self.up = up  # a connected uplink.Uplink
        self.rbuf = rbuf if rbuf is not None else bytearray(1280)  # a received chunk (app.py lends its own)
        self.f = None
        self.expect = None
        self.have = self.size = self.chunk = 0
        self.err = None
        self.cfg = cfg
        self.left_ms = left_ms
        self.feed = feed  # the watchdog
        self.base = '%s/_gateway/ota/f/' % cfg['prefix']
        self.note = ''  # for the status: progress or what went wrong

    def _on_msg(self, topic, msg):
        """A chunk (msg: a memoryview of the client's buffer, valid only now): the awaited one goes to the
        file at once. The broker sends the retained messages of one SUBSCRIBE in the order of its topics."""
        ex, f = self.expect, self.f
        if not ex or f is None or topic != ex[0]:
            return
        want = self.size - self.have
        if want > self.chunk:
            want = self.chunk
        if len(msg) != want:
            self.err = 'ota: chunk %s: %d bytes, not %d' % (topic.decode(), len(msg), want)
            return
        f.write(msg)
        self.have += want
        ex.pop(0)

    def _fetch(self, path, sha, size, chunk):
        """Append the missing chunks of one file to path: True once it is whole and its hash matches, None
        if the wake's time ran out first, False if its hash is wrong (the file is removed)."""
        have = _size(path)
        if have < 0 or have > size or (have % chunk and have != size):
            have = 0
            with open(path, 'wb'):
                pass
        c = self.up.c
        if c is None:
            raise OSError('ota: not connected')
        c.on_msg = self._on_msg
        c.msg_max = chunk + 128
        c.rbuf = self.rbuf
        pre = self.base + sha[:16] + '/'
        self.have, self.size, self.chunk, self.err = have, size, chunk, None
        try:
            with open(path, 'ab') as f:
                self.f = f
                k = have // chunk
                while self.have < size:
                    if self.left_ms() < _MARGIN_MS:
                        return None
                    if self.feed is not None:
                        self.feed()
                    n = min(_WINDOW, (size - self.have + chunk - 1) // chunk)
                    self.expect = [(pre + str(k + i)).encode() for i in range(n)]
                    c.subscribe(self.expect, self.up.ms())
                    c.ping(self.up.ms())  # acknowledges the SUBACK now (mqtt.py): no Nagle stall per window
                    t0 = time.ticks_ms()
                    while self.expect and self.err is None:
                        if time.ticks_diff(time.ticks_ms(), t0) > self.up.ms():
                            raise OSError('ota: no chunk ' + self.expect[0].decode())
                        c.wait_msg(self.up.ms())
                    if self.err is not None:
                        raise OSError(self.err)
                    k += n
        finally:
            self.f = None
            self.expect = None
            c.on_msg = self.up.on_cmd
            c.rbuf = None
        if sha256_file(path, self.rbuf) == sha:
            if have < size:
                print('EK ota file', path, size - have)  # fetched this wake (a resumed one: the rest)
            return True
        os.remove(path)
        return False

    def run(self, m):
        """Work on manifest m (decoded). True once the new build is staged and selected."""
        ver, build, size, chunk = m['version'], m['build'], m['size'], m.get('chunk', 1024)
        if (not isinstance(ver, str) or not isinstance(build, str) or len(build) != 64 or type(size) is not int
                or type(chunk) is not int or not 64 <= chunk <= len(self.rbuf) - 128 or ' ' in ver or not ver):
            self.note = 'bad manifest'
            return False
        if build == otaboot.BUILD:
            return False
        bad = refused()
        if bad is not None and bad[0] == build:
            return False
        if otaboot.TRIAL is not None:  # one change at a time: the running build must prove itself first
            return False
        sel = otaboot.read()
        cur = sel[0] if sel is not None else '-'
        slot = SLOTS[1] if cur == SLOTS[0] else SLOTS[0]
        try:
            os.mkdir(slot)
        except OSError:
            pass
        want = slot + '/.want'
        if _read(want) != build:
            _rmtree(slot)
            with open(want + '.tmp', 'w') as f:
                f.write(build)
            os.rename(want + '.tmp', want)
        idx = slot + '/.index'
        r = self._fetch(idx, build, size, chunk)
        if r is not True:
            return self._failed(r, build, ver, 'index')
        done = 0
        with open(idx) as fi:  # one line at a time: the heap is at its fullest in a publishing wake
            while True:
                line = fi.readline()
                if not line:
                    break
                p = line.split()
                if len(p) != 3 or '/' in p[0] or p[0][0] == '.' or len(p[2]) != 64:
                    refuse(build, ver, 'bad-index')
                    self.note = 'bad index'
                    return False
                gc.collect()
                r = self._fetch(slot + '/' + p[0], p[2], int(p[1]), chunk)
                if r is not True:
                    return self._failed(r, build, ver, p[0])
                done += 1
        # every file is on flash and checked: switch (one rename), with the current build as the way back
        prev = sel[0:3] if sel is not None else ['-', self.cfg['fw'], '-']
        otaboot.write([slot, ver, build, 0] + prev + [self.cfg.get('ota_trials', 3)])
        print('EK ota staged', ver, 'in', slot, 'files', done)
        self.note = 'next ' + ver
        return True

    def _failed(self, r, build, ver, what):
        """A file not whole yet (None: the wake's time ran out, go on at the next publishing wake), or one
        whose hash is wrong (False: the build is refused, until the `update` command)."""
        if r is None:
            self.note = 'fetching ' + ver
            return False
        refuse(build, ver, 'hash')
        self.note = 'hash ' + what
        print('EK ota hash mismatch', what)
        return False

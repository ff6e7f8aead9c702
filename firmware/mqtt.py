# A small MQTT 3.1.1 client for one wake: CONNECT with a last will, QoS 1 PUBLISH that returns after its
# PUBACK, one QoS 0 SUBSCRIBE (the gateway's time on the board's cmd topic), DISCONNECT. Nothing else (no
# QoS 2, no pings: a wake is short).
#
# Every wait is bounded. The socket is non-blocking from the start and never made blocking again; each
# connect, read and write waits in select.poll for at most what is left of the operation's deadline, so a
# broker that stops answering (a half-open TCP connection) costs one timeout, never a hung board. On the
# ESP32 a blocking socket waits forever (ports/esp32/modsocket.c: setblocking(True) and a new socket both
# mean UINT64_MAX retries) and a connect with a timeout is a blocking lwip_connect; poll() with a timeout is
# bounded there (extmod/modselect.c). Every failure is an OSError (errno 110 ETIMEDOUT for a deadline).
import select
import socket
import struct
import time
from micropython import const

ETIMEDOUT = const(110)
_CONNACK = const(0x20)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_MSG_MAX = const(512)  # a PUBLISH to our subscription larger than this is skipped
_OUT = const(512)  # a packet up to this size goes out in one write (one TCP segment, no Nagle wait)


def _b(s):
    """Bytes for the wire: MQTT lengths count bytes, not characters."""
    return s.encode() if isinstance(s, str) else s


def _varlen(buf, i, n):
    """Write the remaining length n at buf[i:]; return the index after it."""
    while True:
        b = n & 0x7F
        n >>= 7
        buf[i] = b | 0x80 if n else b
        i += 1
        if not n:
            return i


class Client:
    def __init__(self, client_id, user=None, password=None, keepalive=0):
        self.id = _b(client_id)
        self.user = _b(user) if user else None
        self.pswd = _b(password or '')
        self.keepalive = keepalive
        self.will = None  # (topic, msg, retain, qos)
        self.on_msg = None  # on_msg(topic, payload) for a PUBLISH to our subscription
        self.msg_max = _MSG_MAX  # a larger one is skipped (ota.py raises it while it fetches chunks)
        self.rbuf = None  # a preallocated buffer for received messages (ota.py), else one per message
        self.sock = None
        self.poll = None
        self.pid = 0
        self.until = time.ticks_ms()
        self.hdr = bytearray(8)
        self.out = bytearray(_OUT)
        self.n = 0

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = (_b(topic), _b(msg), retain, qos)

    # -- bounded I/O ------------------------------------------------------------------------------

    def _deadline(self, ms):
        self.until = time.ticks_add(time.ticks_ms(), ms)

    def _wait(self, ev):
        p = self.poll
        if p is None:
            raise OSError(9)  # EBADF: closed
        left = time.ticks_diff(self.until, time.ticks_ms())
        if left <= 0:
            raise OSError(ETIMEDOUT)
        p.modify(self.sock, ev)
        p.poll(left)  # an event or the deadline; the caller's read/write tells which

    def _write(self, data):
        mv = memoryview(data)
        i = 0
        while i < len(mv):
            self._wait(select.POLLOUT)
            s = self.sock
            if s is None:
                raise OSError(9)
            n = s.write(mv[i:])
            if n:
                i += n

    def _read(self, buf, n):
        mv = memoryview(buf)
        i = 0
        while i < n:
            self._wait(select.POLLIN)
            s = self.sock
            if s is None:
                raise OSError(9)
            r = s.readinto(mv[i:n])
            if r is None:  # nothing yet
                continue
            if r == 0:
                raise OSError(104)  # ECONNRESET: the broker closed the connection
            i += r
        return buf

    def _put(self, data):
        """Queue data for the packet being built; a long payload is written straight from its buffer."""
        n = len(data)
        o = self.n
        if o + n > _OUT:
            self._flush()
            if n > _OUT:
                self._write(data)
                return
            o = 0
        self.out[o:o + n] = data
        self.n = o + n

    def _flush(self):
        n, self.n = self.n, 0
        if n:
            self._write(memoryview(self.out)[:n])

    def _send_str(self, s):
        struct.pack_into('!H', self.hdr, 0, len(s))
        self._put(memoryview(self.hdr)[:2])
        self._put(s)

    def _packet(self):
        """Read one packet header; return (type byte, remaining length)."""
        h = self._read(self.hdr, 1)[0]
        n = 0
        sh = 0
        while True:
            b = self._read(self.hdr, 1)[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return h, n
            sh += 7
            if sh > 21:
                raise OSError(5)  # EIO: malformed length

    def _skip(self, n):
        while n > 0:
            k = n if n < len(self.hdr) else len(self.hdr)
            self._read(self.hdr, k)
            n -= k

    # -- MQTT --------------------------------------------------------------------------------------

    def connect(self, addr, timeout_ms, clean=True, tls=None):
        """Open the TCP connection to addr (from socket.getaddrinfo) and log in; at most timeout_ms.
        tls: (ssl.SSLContext, server_hostname): the connection is wrapped before the first byte; the
        handshake runs inside the bounded writes and reads below (extmod/modtls_mbedtls.c: a non-blocking
        socket gives EAGAIN, and poll asks for the direction the handshake needs). A certificate that does
        not verify is an OSError like any other network failure."""
        self.close()
        self._deadline(timeout_ms)
        s = socket.socket()
        self.sock = s
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError:
            pass  # EINPROGRESS (its number differs between ports); a real failure shows at the first write
        if tls is not None:
            s = tls[0].wrap_socket(s, server_hostname=tls[1], do_handshake_on_connect=False)
            self.sock = s
        self.poll = select.poll()
        self.poll.register(s, select.POLLOUT)
        try:
            self._login(clean)
        except ValueError as e:  # modtls: a certificate that does not verify
            self.close()
            raise OSError('tls: %s' % e)

    def _login(self, clean):
        will = self.will
        sz = 10 + 2 + len(self.id)
        flags = 0x02 if clean else 0
        if will is not None:
            sz += 2 + len(will[0]) + 2 + len(will[1])
            flags |= 0x04 | (will[3] & 3) << 3 | (0x20 if will[2] else 0)
        if self.user:
            sz += 2 + len(self.user) + 2 + len(self.pswd)
            flags |= 0xC0
        h = self.hdr
        h[0] = 0x10
        i = _varlen(h, 1, sz)
        self.n = 0
        self._put(memoryview(h)[:i])
        self._put(b'\x00\x04MQTT\x04')
        h[0] = flags
        struct.pack_into('!H', h, 1, self.keepalive)
        self._put(memoryview(h)[:3])
        self._send_str(self.id)
        if will is not None:
            self._send_str(will[0])
            self._send_str(will[1])
        if self.user:
            self._send_str(self.user)
            self._send_str(self.pswd)
        self._flush()
        op, n = self._packet()
        if op != _CONNACK or n != 2:
            raise OSError(5)
        self._read(h, 2)
        if h[1] != 0:
            raise OSError('mqtt refused %d' % h[1])

    def publish(self, topic, msg, retain, timeout_ms):
        """Publish at QoS 1 and return once the broker's PUBACK for it arrived; at most timeout_ms."""
        self._deadline(timeout_ms)
        topic = _b(topic)
        self.pid = self.pid % 65535 + 1
        pid = self.pid
        h = self.hdr
        h[0] = 0x32 | (1 if retain else 0)
        i = _varlen(h, 1, 2 + len(topic) + 2 + len(msg))
        self.n = 0
        self._put(memoryview(h)[:i])
        self._send_str(topic)
        struct.pack_into('!H', h, 0, pid)
        self._put(memoryview(h)[:2])
        self._put(msg)
        self._flush()
        while True:
            op, n = self._packet()
            if op == _PUBACK and n == 2:
                if struct.unpack_from('!H', self._read(h, 2), 0)[0] == pid:
                    return
            else:
                self._other(op, n)  # a message to our subscription, or something that is not ours

    def _other(self, op, n):
        """A packet that is not the one awaited: a (QoS 0) PUBLISH goes to on_msg, the rest is skipped."""
        if op & 0xF0 == 0x30 and not op & 6 and self.on_msg is not None and 2 <= n <= self.msg_max:
            rb = self.rbuf
            if rb is not None and n <= len(rb):  # into the caller's buffer: on_msg gets a memoryview of it
                mv = memoryview(self._read(rb, n))
                tl = rb[0] << 8 | rb[1]
                if 2 + tl <= n:
                    self.on_msg(bytes(mv[2:2 + tl]), mv[2 + tl:n])
                return
            buf = self._read(bytearray(n), n)
            tl = buf[0] << 8 | buf[1]
            if 2 + tl <= n:
                self.on_msg(bytes(buf[2:2 + tl]), bytes(buf[2 + tl:]))
            return
        self._skip(n)

    def subscribe(self, topic, timeout_ms):
        """SUBSCRIBE at QoS 0 to a topic, or to a list of them in one packet, and return once the SUBACK
        came; at most timeout_ms. A refused filter is an OSError."""
        self._deadline(timeout_ms)
        topics = [_b(t) for t in topic] if isinstance(topic, (list, tuple)) else [_b(topic)]
        self.pid = self.pid % 65535 + 1
        pid = self.pid
        h = self.hdr
        h[0] = 0x82
        sz = 2
        for t in topics:
            sz += 2 + len(t) + 1
        i = _varlen(h, 1, sz)
        self.n = 0
        self._put(memoryview(h)[:i])
        struct.pack_into('!H', h, 0, pid)
        self._put(memoryview(h)[:2])
        for t in topics:
            self._send_str(t)
            self._put(b'\x00')
        self._flush()
        k = len(topics)
        while True:
            op, n = self._packet()
            if op == _SUBACK and n == 2 + k and k <= len(h) - 2:
                self._read(h, n)
                if struct.unpack_from('!H', h, 0)[0] == pid:
                    for j in range(k):
                        if h[2 + j] == 0x80:
                            raise OSError('mqtt subscribe refused')
                    return
            else:
                self._other(op, n)

    def ping(self, timeout_ms):
        """Send a PINGREQ (its PINGRESP is skipped when it comes). Sent right after a SUBACK it carries the
        TCP acknowledgement of it at once: a broker with Nagle's algorithm on (Mosquitto's default) holds
        the retained messages that follow a SUBACK until that acknowledgement, which the receiver's stack
        otherwise delays (40 ms on Linux, up to 250 ms in lwIP) once per SUBSCRIBE."""
        self._deadline(timeout_ms)
        self._write(b'\xc0\x00')

    def wait_msg(self, timeout_ms):
        """Wait at most timeout_ms for one packet and handle it (a PUBLISH goes to on_msg); False when none
        came."""
        self._deadline(timeout_ms)
        try:
            op, n = self._packet()
        except OSError as e:
            if e.args and e.args[0] == ETIMEDOUT:
                return False
            raise
        self._other(op, n)
        return True

    def disconnect(self, timeout_ms):
        """A clean DISCONNECT (the broker discards the will), then close."""
        try:
            self._deadline(timeout_ms)
            self._write(b'\xe0\x00')
        finally:
            self.close()

    def close(self):
        s, self.sock, self.poll = self.sock, None, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

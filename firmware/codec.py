# Wire contract v1 encoder (docs/protocol.md), written out by hand so the bytes do not depend on the
# port's dict ordering or float repr. Pure: no board imports.
#
# A reading is a tuple (b, s, t, q, metrics) where metrics is a sequence of (name, value) pairs in the
# order they are to appear. A value is a bool, int, float, str, or a fixed-point pair (int, decimals),
# which is how the buffer stores sensor values (no float rounding on single-precision ports).
from micropython import const

V = const(1)
MAX_BYTES = const(4096)  # the firmware's own cap; the contract allows 8192
MAX_READINGS = const(64)

_ESC = {'"': '\\"', '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t'}


def jstr(s):
    for ch in s:
        if ch in _ESC or ch < ' ':
            break
    else:
        return '"' + s + '"'  # nothing to escape
    out = []
    for ch in s:
        e = _ESC.get(ch)
        if e is None and ch < ' ':
            e = '\\u%04x' % ord(ch)
        out.append(e if e is not None else ch)
    return '"' + ''.join(out) + '"'


def jfloat(x):
    if x != x:
        return 'NaN'  # the gateway dead-letters the reading as non_finite
    if x in (float('inf'), float('-inf')):
        return 'Infinity' if x > 0 else '-Infinity'
    a = -x if x < 0 else x
    if a == 0 or 1e-4 <= a < 1e15:
        for d in range(0, 18):  # fewest decimals that read back as the same float on this port
            s = ('%.' + str(d) + 'f') % x
            if float(s) == x:
                break
        if '.' not in s:
            s += '.0'  # keep the float type (an InfluxDB field keeps one type)
        return s
    for p in range(1, 18):
        s = ('%.' + str(p) + 'e') % x
        if float(s) == x:
            break
    m, e = s.split('e')
    return m + 'e' + str(int(e))


def jfixed(v, d):
    if d <= 0:
        return str(v)
    neg = v < 0
    a = -v if neg else v
    p = 10 ** d
    f = str(a % p)
    f = '0' * (d - len(f)) + f
    f = f.rstrip('0') or '0'
    return ('-' if neg else '') + str(a // p) + '.' + f


def jval(v):
    t = type(v)
    if t is bool:
        return 'true' if v else 'false'
    if t is int:
        return str(v)
    if t is float:
        return jfloat(v)
    if t is str:
        return jstr(v)
    if t is tuple:
        return jfixed(v[0], v[1])
    raise ValueError('unencodable value %r' % (v,))


def reading(r):
    """One reading as text: {"b":..,"s":..,"t":..,"q":..,"m":{...}}."""
    parts = ['{"b":', str(r[0]), ',"s":', str(r[1]), ',"t":', str(r[2]), ',"q":"', r[3], '","m":{']
    first = True
    for name, val in r[4]:
        if not first:
            parts.append(',')
        first = False
        parts.append('"')
        parts.append(name)
        parts.append('":')
        parts.append(jval(val))
    parts.append('}}')
    return ''.join(parts)


def head(dev):
    return '{"v":1,"dev":' + jstr(dev) + ',"r":['


def tail(flushed=None):
    if flushed is None:
        return ']}'
    return '],"flushed":' + str(flushed) + '}'


def readings(dev, rs, flushed=None):
    """A whole readings message (bytes) for the readings rs, oldest first."""
    return (head(dev) + ','.join([reading(r) for r in rs]) + tail(flushed)).encode()


class Batcher:
    """Packs encoded readings into one message no larger than cap bytes, in a preallocated buffer."""

    def __init__(self, dev, cap=MAX_BYTES, buf=None):
        self.buf = buf if buf is not None else bytearray(cap)  # allocate early in a wake: one 4 KB block
        self.cap = len(self.buf)
        self.h = head(dev).encode()
        self.reset()

    def reset(self):
        self.buf[0:len(self.h)] = self.h
        self.n = len(self.h)
        self.count = 0

    def add(self, r, reserve=32):
        """Append reading r; False (and nothing written) when it would not fit with room for the tail."""
        if self.count >= MAX_READINGS:
            return False
        b = reading(r).encode()
        need = len(b) + (1 if self.count else 0)
        if self.n + need + reserve > self.cap:
            return False
        if self.count:
            self.buf[self.n] = 44  # ','
            self.n += 1
        self.buf[self.n:self.n + len(b)] = b
        self.n += len(b)
        self.count += 1
        return True

    def finish(self, flushed=None):
        """The message as a memoryview into the buffer (valid until the next reset)."""
        t = tail(flushed).encode()
        self.buf[self.n:self.n + len(t)] = t
        return memoryview(self.buf)[:self.n + len(t)]


def status(dev, state, fields=()):
    """Status message: v, dev, state, then fields (pairs) in the given order."""
    parts = ['{"v":1,"dev":', jstr(dev), ',"state":"', state, '"']
    for k, v in fields:
        parts.append(',"')
        parts.append(k)
        parts.append('":')
        parts.append(jval(v))
    parts.append('}')
    return ''.join(parts).encode()


def will(dev):
    return status(dev, 'offline')

# Host shim for the ESP32 port's `socket` (ports/esp32/modsocket.c), over the unix port's built-in one.
# `socket.py` re-exports this module (and start.py installs it as `usocket` too), so the firmware (and any library it imports) gets
# the board's socket semantics where they differ from the unix port's:
#
# - setblocking(True) means "wait forever" on the ESP32 (_socket_settimeout(sock, UINT64_MAX)): it drops a
#   timeout set before. The unix port only clears O_NONBLOCK and keeps SO_RCVTIMEO, so a library that calls
#   setblocking(True) after settimeout() (umqtt.simple's wait_msg does, for every packet) is bounded on the
#   host and unbounded on the board. Here it is unbounded, as on the board.
# - connect() on a socket with a timeout is a blocking lwip_connect (the timeout applies to reads and writes,
#   not to the connect); only a non-blocking socket connects asynchronously (EINPROGRESS, then poll).
# - getaddrinfo() returns the ESP32's form, [(family, type, proto, '', (ip, port))], and sockets take
#   (ip, port) tuples; a name (not an IPv4 literal) is a DNS query through lwIP, which blocks the caller:
#   the scenario's "dns" maps names to addresses, and inside its "dns_down" windows the call hangs for
#   "dns_hang_ms" (absent: forever, until the watchdog) and then fails. connect()/sendto() to a name look
#   it up the same way, as modsocket.c does.
# Everything else (reads, writes, poll, errors) is the host's own TCP/IP on loopback.
import sys
import time

import _simboard as _sb


def _builtin(name, path=()):
    """The unix port's built-in module `name` (or the one found on `path`, e.g. ['.frozen']), even while a shim
    of that name is on the path; the select and ssl shims take theirs from here too."""
    saved_path = sys.path[:]
    saved = sys.modules.pop(name, None)
    sys.path[:] = list(path)
    try:
        return __import__(name)
    finally:
        sys.path[:] = saved_path
        if saved is not None:
            sys.modules[name] = saved


_real = _builtin('socket')

AF_INET = _real.AF_INET
AF_INET6 = _real.AF_INET6
SOCK_STREAM = _real.SOCK_STREAM
SOCK_DGRAM = _real.SOCK_DGRAM
SOCK_RAW = _real.SOCK_RAW
SOL_SOCKET = _real.SOL_SOCKET
SO_REUSEADDR = _real.SO_REUSEADDR
IPPROTO_IP = 0  # the ESP32's constants (lwIP's values)
IPPROTO_TCP = 6
IPPROTO_UDP = 17

_EAI_NONAME = -202  # what the ESP32 raises for a name lwIP could not resolve


def _is_ipv4(host):
    p = host.split('.')
    if len(p) != 4:
        return False
    for x in p:
        if not x or len(x) > 3 or not all('0' <= c <= '9' for c in x) or int(x) > 255:
            return False
    return True


def _lookup(host):
    """lwIP's DNS as the scenario has it: an address, a hang, or an error."""
    if host == '' or _is_ipv4(host):
        return host or '0.0.0.0'
    _sb.truth('dns %d %s' % (_sb.vt(), host))
    if _sb.in_window('dns_down') or _sb.in_window('wifi_down'):
        hang = _sb.SCN.get('dns_hang_ms')
        if hang is None:
            while True:  # blocked in lwip_getaddrinfo: only the watchdog ends this
                time.sleep(1)
        time.sleep_ms(int(hang))
        raise OSError(_EAI_NONAME)
    ip = _sb.SCN.get('dns', {}).get(host)
    if ip is None:
        raise OSError(_EAI_NONAME)
    return ip


def _sockaddr(addr):
    """An ESP32-style (host, port) address as the unix port's sockaddr (bytes pass through)."""
    if isinstance(addr, tuple):
        ip = _lookup(addr[0])
        return _real.getaddrinfo(ip, addr[1])[0][-1]
    return addr


def _tuple(sa):
    """A unix sockaddr (AF_INET) as the ESP32's (ip, port)."""
    if isinstance(sa, tuple) or len(sa) < 8:
        return sa
    return ('%d.%d.%d.%d' % (sa[4], sa[5], sa[6], sa[7]), sa[2] << 8 | sa[3])


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    ip = _lookup(host)
    return [(AF_INET, SOCK_STREAM, 0, '', (ip, int(port)))]


class socket(_real.socket):
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        super().__init__(af, type, proto)
        self._timeout = None  # as modsocket.c: a new socket blocks without a timeout

    def settimeout(self, t):
        super().settimeout(t)
        self._timeout = t

    def setblocking(self, flag):
        if flag:  # modsocket.c: _socket_settimeout(sock, UINT64_MAX), the timeout is gone
            self.settimeout(None)
        else:
            self.settimeout(0)

    def connect(self, addr):
        sa = _sockaddr(addr)
        t = self._timeout
        if t is None or t == 0:
            return super().connect(sa)
        super().settimeout(None)  # a blocking lwip_connect: the timeout does not bound it
        try:
            return super().connect(sa)
        finally:
            super().settimeout(t)

    def sendto(self, data, addr):
        return super().sendto(data, _sockaddr(addr))

    def recvfrom(self, n):
        data, sa = super().recvfrom(n)
        return data, _tuple(sa)

    def bind(self, addr):
        return super().bind(_sockaddr(addr))

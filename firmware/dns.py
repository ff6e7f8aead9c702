# A DNS A-record lookup over UDP with a deadline. On the ESP32, socket.getaddrinfo() of a name is
# lwip_getaddrinfo(): it blocks the caller until lwIP's own retries give up, and nothing in Python can cut
# it short. Here the query is ours: one UDP socket, non-blocking, waited on with select.poll until the
# deadline. getaddrinfo() is then only ever called with an IPv4 literal, which lwIP answers at once.
import os
import select
import socket
import struct
import time
from micropython import const

_A = const(1)
_IN = const(1)
NOTFOUND = const(-202)  # the errno the ESP32's getaddrinfo raises for a name it could not resolve


def is_ipv4(host):
    p = host.split('.')
    if len(p) != 4:
        return False
    for x in p:
        if not x or len(x) > 3 or not x.isdigit() or int(x) > 255:
            return False
    return True


def _skip_name(d, i):
    while True:
        n = d[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:  # a compression pointer ends the name
            return i + 2
        i += n + 1


def _answer(d, qid):
    """(ip, ttl_s) from a reply to query qid; None if the datagram is not that reply; OSError if the
    server says the name does not exist or has no address."""
    if len(d) < 12:
        return None
    rid, flags, qd, an = struct.unpack_from('!HHHH', d, 0)
    if rid != qid or not flags & 0x8000:
        return None
    if flags & 0x000F:
        raise OSError(NOTFOUND)  # NXDOMAIN, SERVFAIL, REFUSED ...
    i = 12
    for _ in range(qd):
        i = _skip_name(d, i) + 4
    for _ in range(an):
        i = _skip_name(d, i)
        typ, cls, ttl, n = struct.unpack_from('!HHIH', d, i)
        i += 10
        if typ == _A and cls == _IN and n == 4:
            return '%d.%d.%d.%d' % (d[i], d[i + 1], d[i + 2], d[i + 3]), ttl
        i += n
    raise OSError(NOTFOUND)


def resolve(name, server, port, timeout_ms):
    """The IPv4 address of name as (ip, ttl_s), asking server:port; at most timeout_ms, then OSError 110."""
    until = time.ticks_add(time.ticks_ms(), timeout_ms)
    qid = struct.unpack('!H', os.urandom(2))[0]  # unguessable, so a stray reply is not taken
    q = bytearray(struct.pack('!HHHHHH', qid, 0x0100, 1, 0, 0, 0))  # recursion desired, one question
    for label in name.split('.'):
        if label:
            q.append(len(label))
            q.extend(label.encode())
    q.extend(b'\x00\x00\x01\x00\x01')  # end of name, type A, class IN
    addr = socket.getaddrinfo(server, port)[0][-1]  # an IP literal: no lookup
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        p = select.poll()
        p.register(s, select.POLLIN)
        s.sendto(q, addr)
        sent = time.ticks_ms()
        while True:
            left = time.ticks_diff(until, time.ticks_ms())
            if left <= 0:
                raise OSError(110)
            if time.ticks_diff(time.ticks_ms(), sent) >= 1000:  # UDP: ask again every second
                s.sendto(q, addr)
                sent = time.ticks_ms()
            p.poll(min(left, 1000))
            try:
                d = s.recv(512)
            except OSError:
                continue  # nothing yet
            r = _answer(d, qid)
            if r is not None:
                return r
    finally:
        s.close()

# A minimal SNTP client (RFC 4330) with millisecond resolution (ntptime gives whole seconds). Portable:
# only socket, struct, os and time. Raises OSError on any network problem or on a reply that must not be
# used: not a server's (mode 4), unsynchronised (leap indicator 3, stratum 0 = kiss-o'-death, stratum 16
# or more), without a transmit time, or not an answer to this request (its originate time must be the
# random transmit time we sent). Whether the time is plausible is timebase.py's question.
import os
import socket
import struct
import time
from micropython import const

_NTP_UNIX = const(2208988800)  # seconds from 1900-01-01 to 1970-01-01


def ntp_ms(sec, frac):
    """NTP timestamp -> Unix ms. Seconds with the top bit clear are in era 1 (from 2036-02-07 on;
    RFC 4330 section 3): no reply we can get dates from before 1968."""
    if not sec & 0x80000000:
        sec += 0x100000000
    return (sec - _NTP_UNIX) * 1000 + (frac * 1000 >> 32)


def query(host, port=123, timeout_s=2):
    """(Unix ms at the moment this returns, round trip ms)."""
    pkt = bytearray(48)
    pkt[0] = 0x23  # LI 0, version 4, mode 3 (client)
    nonce = os.urandom(8)
    pkt[40:48] = nonce  # transmit time: any value; the server echoes it as the originate time
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout_s)
        t0 = time.ticks_ms()
        s.sendto(pkt, addr)
        msg = s.recv(48)
        t1 = time.ticks_ms()
    finally:
        s.close()
    if len(msg) < 48:
        raise OSError('ntp short')
    li, mode, stratum = msg[0] >> 6, msg[0] & 0x07, msg[1]
    if mode != 4 or li == 3 or stratum == 0 or stratum >= 16:
        raise OSError('ntp li %d mode %d stratum %d' % (li, mode, stratum))
    if bytes(msg[24:32]) != nonce:
        raise OSError('ntp origin')
    rs, rf, ts, tf = struct.unpack_from('!IIII', msg, 32)
    if ts == 0 and tf == 0:
        raise OSError('ntp tx 0')
    tx = ntp_ms(ts, tf)
    rx = ntp_ms(rs, rf) if rs or rf else tx
    rtt = time.ticks_diff(t1, t0) - max(0, tx - rx)  # minus the server's own processing time
    if rtt < 0:
        rtt = 0
    return tx + rtt // 2, rtt

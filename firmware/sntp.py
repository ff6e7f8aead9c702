# A minimal SNTP client with millisecond resolution (ntptime gives whole seconds). Portable: only
# socket and time. Raises OSError on any network problem or a bogus reply.
import socket
import struct
import time
from micropython import const

_NTP_UNIX = const(2208988800)  # seconds from 1900-01-01 to 1970-01-01


def query(host, port=123, timeout_s=2):
    """Unix milliseconds at the moment this returns."""
    pkt = bytearray(48)
    pkt[0] = 0x1B  # LI 0, version 3, mode 3 (client)
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
    if len(msg) < 48 or msg[0] & 0x07 != 4 or msg[1] == 0:
        raise OSError(5)  # not a server reply, or kiss-of-death (stratum 0)
    sec, frac = struct.unpack_from('!II', msg, 40)
    return (sec - _NTP_UNIX) * 1000 + (frac * 1000 >> 32) + time.ticks_diff(t1, t0) // 2

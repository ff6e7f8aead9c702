# Host shim for `ssl`: MicroPython's own ssl module (micropython-lib python-stdlib/ssl, frozen into the ESP32
# and unix ports alike, over the same extmod/modtls_mbedtls.c), with one difference made up for: the TLS
# layer drives its socket through the C stream protocol, which a Python subclass of the unix socket (the
# ESP32 socket shim, _espnet.py) does not carry. wrap_socket() hands it a small stream over the shim socket
# instead, so reads, writes, setblocking() and poll keep the ESP32's semantics under TLS too.
import io

import _espnet

_real = _espnet._builtin('ssl', ['.frozen'])
_sel = __import__('select')  # the select shim (by fd)

CERT_NONE = _real.CERT_NONE
CERT_OPTIONAL = _real.CERT_OPTIONAL
CERT_REQUIRED = _real.CERT_REQUIRED
PROTOCOL_TLS_CLIENT = _real.PROTOCOL_TLS_CLIENT
PROTOCOL_TLS_SERVER = _real.PROTOCOL_TLS_SERVER
MBEDTLS_VERSION = _real.MBEDTLS_VERSION

_POLL = 3  # py/stream.h MP_STREAM_POLL
_CLOSE = 4  # MP_STREAM_CLOSE


class _Stream(io.IOBase):
    def __init__(self, s):
        self.s = s

    def readinto(self, buf):
        return self.s.readinto(buf)  # None when nothing is there yet: EAGAIN to the TLS layer

    def write(self, buf):
        return self.s.write(buf)

    def setblocking(self, flag):
        return self.s.setblocking(flag)

    def ioctl(self, req, arg):
        if req == _POLL:
            p = _sel.poll()
            p.register(self.s, arg)
            r = p.poll(0)
            return r[0][1] if r else 0
        if req == _CLOSE:
            self.s.close()
            return 0
        return -1


class SSLContext(_real.SSLContext):
    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        if isinstance(sock, _espnet.socket):
            sock = _Stream(sock)
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, server_hostname)


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
                server_hostname=None, do_handshake=True):
    con = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
    if cert or key:
        con.load_cert_chain(cert, key)
    if cadata:
        con.load_verify_locations(cadata=cadata)
    con.verify_mode = cert_reqs
    return con.wrap_socket(sock, server_side, do_handshake, server_hostname)

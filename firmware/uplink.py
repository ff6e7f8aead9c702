# MQTT uplink over our own small client (mqtt.py): connect with a last will, publish at QoS 1 (publish()
# returns only after the broker's PUBACK), and hand back what was acknowledged so the caller can consume it.
# Every wait is bounded by net_timeout_s and by what is left of the wake (left_ms); every failure is an
# OSError.
#
# The broker's address: an IPv4 literal is used as it is. A name is looked up with dns.py (bounded, unlike
# getaddrinfo on the ESP32) at the Wi-Fi's DNS server, and the answer is kept in RTC memory (st.ip) for
# dns_cache_s worth of wakes, so most wakes send no DNS query at all; when the lookup fails an older
# address is still tried, and a connect that fails drops it.
import socket
import time
from micropython import const

import codec
from mqtt import Client

_RETRIES = const(2)
_CLOSE_MARGIN_MS = const(1500)  # left for DISCONNECT, saving the state and going to sleep


def _ntoa(n):
    return '%d.%d.%d.%d' % (n >> 24, (n >> 16) & 255, (n >> 8) & 255, n & 255)


def _aton(ip):
    n = 0
    for x in ip.split('.'):
        n = n << 8 | int(x)
    return n


_tls = None  # (context, name) or the OSError of making it: prepare()


def _context(cfg):
    import ssl  # only with TLS (frozen on the board; the host shim takes KBs of heap)
    try:
        with open(cfg.get('ca') or 'ca.der', 'rb') as f:
            ca = f.read()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # micropython-lib's ssl.SSLContext starts at CERT_NONE (the ESP32 stubs lack its verify_mode)
        ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]
        ctx.load_verify_locations(cadata=ca)
    except (OSError, ValueError, MemoryError) as e:
        return OSError('tls ca %s: %r' % (cfg.get('ca'), e))
    return ctx, cfg.get('tls_name') or cfg['broker']


def prepare(cfg):
    """With 'tls', make the TLS context now, early in the wake: its mbedTLS state is one object of some KB
    (3 KB on the 64-bit unix port) that a heap fragmented by the wake may not have in one piece. A failure
    (no CA file, a bad one) is kept and raised by the connect, where network failures are handled."""
    global _tls
    _tls = _context(cfg) if cfg.get('tls') else None


class Uplink:
    def __init__(self, cfg, left_ms=None, st=None, dns_server=None):
        p = '%s/%s/%s/' % (cfg['prefix'], cfg['site'], cfg['device'])
        self.t_readings = p + 'readings'
        self.t_status = p + 'status'
        self.t_cmd = p + 'cmd'
        m = '%s/_gateway/ota/manifest' % cfg['prefix']
        self.t_ota = (m, m + '/' + cfg['device'])  # the fleet's build, this board's own (ota.py)
        self.cfg = cfg
        self.dev = cfg['device']
        self.left_ms = left_ms
        self.st = st
        self.dns_server = dns_server
        self.c = None
        self.got = None  # (ticks_ms, payload) of the gateway's first time reply on the cmd topic
        self.inbox = {}  # topic -> payload: a command (retained on cmd, with an id), the OTA manifests

    def ms(self):
        """The time one network operation may take now."""
        t = self.cfg['net_timeout_s'] * 1000
        if self.left_ms is not None:
            left = self.left_ms() - _CLOSE_MARGIN_MS
            if left < t:
                t = left
        if t <= 0:
            raise OSError(110)  # ETIMEDOUT: the wake is over
        return t

    def address(self):
        import dns
        cfg, st = self.cfg, self.st
        host, port = cfg['broker'], cfg.get('port', 1883)
        if dns.is_ipv4(host):
            return socket.getaddrinfo(host, port)[0][-1]  # a literal: lwIP answers without a query
        ip = _ntoa(st.ip) if st is not None and st.ip else None
        if ip is None or st is None or st.ip_age * cfg['sleep_s'] >= cfg.get('dns_cache_s', 86400):
            try:
                if not self.dns_server:
                    raise OSError(dns.NOTFOUND)
                ip = dns.resolve(host, self.dns_server, cfg.get('dns_port', 53), self.ms())[0]
                if st is not None:
                    st.ip = _aton(ip)
                    st.ip_age = 0
            except OSError as e:
                if ip is None:
                    raise OSError('dns %s: %r' % (host, e))
                # the address we had is still worth a try
        return socket.getaddrinfo(ip, port)[0][-1]

    def tls(self):
        """(context, name) for TLS to the broker, verified against the fleet's CA; None without 'tls'."""
        t = _tls
        if t is None and self.cfg.get('tls'):
            t = _context(self.cfg)
        if isinstance(t, OSError):
            raise t
        return t

    def connect(self):
        cfg = self.cfg
        err = None
        tls = self.tls()
        for i in range(_RETRIES):  # bounded retry
            c = Client(self.dev, cfg.get('mqtt_user'), cfg.get('mqtt_password'), cfg['keepalive_s'])
            c.set_last_will(self.t_status, codec.will(self.dev), True, 1)
            try:
                c.connect(self.address(), self.ms(), True, tls)
                self.c = c
                return
            except OSError as e:
                err = e
                c.close()
                if self.st is not None:
                    self.st.ip_age = 0xFFFF  # look the name up again next time (an IP literal ignores it)
                if i + 1 < _RETRIES:
                    time.sleep_ms(200 * (i + 1))
        raise OSError('mqtt connect: %r' % (err,))

    def publish(self, topic, msg, retain=False):
        c = self.c
        if c is None:
            raise OSError('mqtt publish: not connected')
        try:
            c.publish(topic, msg, retain, self.ms())
        except OSError:
            c.close()
            self.c = None
            raise

    def listen(self):
        """Subscribe (QoS 0) to this board's cmd topic and the OTA manifests, in one packet. On cmd the
        gateway answers an 'online' status with its time (docs/protocol.md), and a retained command waits
        (cmds.py); the retained manifests come with the SUBACK. Whatever is retained has arrived by the
        time the PUBACK of the next publish does (the broker answers in order). A message that arrives while
        we wait for a PUBACK is kept too."""
        c = self.c
        if c is None:
            raise OSError('mqtt subscribe: not connected')
        self.got = None
        self.inbox = {}
        c.on_msg = self.on_cmd
        try:
            c.subscribe((self.t_cmd,) + self.t_ota, self.ms())
        except OSError:
            c.close()
            self.c = None
            raise

    def on_cmd(self, topic, msg):
        topic = topic.decode()
        if topic == self.t_cmd and b'"id"' not in msg:  # the gateway's time
            if self.got is None:
                self.got = (time.ticks_ms(), msg)
        else:
            self.inbox[topic] = msg

    def poll(self, ms):
        """The first cmd message, waiting at most ms for it: (ticks_ms when it came, payload) or None."""
        c = self.c
        t0 = time.ticks_ms()
        while self.got is None and c is not None:
            left = ms - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                break
            try:
                c.wait_msg(min(left, self.ms()))
            except OSError:
                c.close()
                self.c = None
                raise
        return self.got

    def status(self, state, fields):
        self.publish(self.t_status, codec.status(self.dev, state, fields), True)

    def close(self, clean=True):
        c, self.c = self.c, None
        if c is None:
            return
        try:
            if clean:
                c.disconnect(self.cfg['net_timeout_s'] * 1000)
            else:
                c.close()
        except OSError:
            pass

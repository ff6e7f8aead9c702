# MQTT uplink over umqtt.simple: connect with a last will, publish at QoS 1 (publish() returns only
# after the broker's PUBACK), and hand back what was acknowledged so the caller can consume it.
# Every failure surfaces as OSError (umqtt's MQTTException and its asserts are converted here).
import time
from micropython import const
import codec
from umqtt.simple import MQTTClient, MQTTException

_RETRIES = const(2)


class Uplink:
    def __init__(self, cfg):
        p = '%s/%s/%s/' % (cfg['prefix'], cfg['site'], cfg['device'])
        self.t_readings = p + 'readings'
        self.t_status = p + 'status'
        self.t_cmd = p + 'cmd'
        self.cfg = cfg
        self.dev = cfg['device']
        self.c = None
        self.got = None  # (ticks_ms, payload) of the first message on the cmd topic

    def connect(self):
        cfg = self.cfg
        err = None
        for i in range(_RETRIES):  # bounded retry
            c = MQTTClient(self.dev, cfg['broker'], cfg.get('port', 1883), cfg.get('mqtt_user'),
                           cfg.get('mqtt_password'), keepalive=cfg['keepalive_s'])
            c.set_last_will(self.t_status, codec.will(self.dev), True, 1)
            try:
                try:
                    c.connect(True, cfg['net_timeout_s'])  # newer umqtt.simple bounds the connect
                except TypeError:
                    c.connect(True)
                c.sock.settimeout(cfg['net_timeout_s'])
                self.c = c
                return
            except (OSError, MQTTException, AssertionError, IndexError) as e:
                err = e
                try:
                    c.sock.close()
                except Exception:
                    pass
                time.sleep_ms(200 * (i + 1))
        raise OSError('mqtt connect: %r' % (err,))

    def publish(self, topic, msg, retain=False):
        c = self.c
        if c is None:
            raise OSError('mqtt publish: not connected')
        try:
            c.publish(topic, msg, retain, 1)
        except OSError:
            raise
        except Exception as e:  # MQTTException, assertion on a malformed packet, short read
            raise OSError('mqtt publish: %r' % (e,))

    def listen(self):
        """Subscribe to this board's cmd topic (QoS 0): the gateway answers an 'online' status there with
        its time (docs/protocol.md). A message that arrives while we wait for a PUBACK is kept too."""
        c = self.c
        if c is None:
            raise OSError('mqtt subscribe: not connected')
        self.got = None
        c.set_callback(self._on_cmd)
        try:
            c.subscribe(self.t_cmd, 0)
        except OSError:
            raise
        except Exception as e:
            raise OSError('mqtt subscribe: %r' % (e,))
        c.sock.settimeout(self.cfg['net_timeout_s'])

    def _on_cmd(self, topic, msg):
        if self.got is None:
            self.got = (time.ticks_ms(), bytes(msg))

    def poll(self, ms):
        """The first cmd message, waiting at most ms for it: (ticks_ms when it came, payload) or None."""
        c = self.c
        t0 = time.ticks_ms()
        try:
            while self.got is None and c is not None and time.ticks_diff(time.ticks_ms(), t0) < ms:
                c.check_msg()
                if self.got is None:
                    time.sleep_ms(10)
        except OSError:
            raise
        except Exception as e:
            raise OSError('mqtt poll: %r' % (e,))
        finally:
            if c is not None and c.sock is not None:
                c.sock.settimeout(self.cfg['net_timeout_s'])
        return self.got

    def status(self, state, fields):
        self.publish(self.t_status, codec.status(self.dev, state, fields), True)

    def close(self, clean=True):
        c, self.c = self.c, None
        if c is None:
            return
        try:
            if clean:
                c.disconnect()
            else:
                c.sock.close()
        except Exception:
            pass

# The wake cycle: wake, sample, buffer, publish every K wakes (or when the buffer passes a fill level),
# deep sleep. The whole wake is bounded by wake_timeout_s (checked between steps, sockets time out,
# and the watchdog catches the rest) and always ends in deep sleep, whatever went wrong.
import gc
import sys
import time
from micropython import const

import codec
import hw

_MARGIN_MS = const(5000)
_BOOT = 'boot.cnt'


def log(*a):
    print('EK', *a)


def mem(tag):
    gc.collect()
    log('mem', tag, gc.mem_alloc(), gc.mem_free())


def bump_boot():
    """The boot counter in flash: read, add one, replace atomically."""
    import os
    n = 0
    try:
        with open(_BOOT) as f:
            n = int(f.read())
    except (OSError, ValueError):
        pass
    n += 1
    with open(_BOOT + '.tmp', 'w') as f:
        f.write(str(n))
    os.rename(_BOOT + '.tmp', _BOOT)
    return n


class Wake:
    def __init__(self, cfg, t0, wdt, msgbuf):
        from state import State
        from buffer import Buffer, rec_size
        from timebase import Clock
        self.cfg = cfg
        self.t0 = t0
        self.wdt = wdt
        self.msgbuf = msgbuf
        self.names = ['temp_c', 'rh'] + [a[0] for a in cfg['adc']]
        self.dec = [2, 1] + [0 for _ in cfg['adc']]
        nm = len(self.names)
        st = State(cfg['rtc_mem'], rec_size(nm))
        ok = st.load(hw.mem_read())
        woke = hw.woke_from_sleep()
        if not (ok and woke):  # power-on, reset, crash or watchdog: a new boot
            boot = bump_boot()
            if not ok:  # RTC memory lost (power-on): the RTC lost its time too
                st.fresh()
                st.era_boot = boot
            st.boot = boot
            st.seq = 0
            log('boot', boot, 'cause', hw.reset_cause(), 'rtcmem', ok)
        self.st = st
        self.buf = Buffer(st, nm, cfg['log_max'], self.save)
        self.clk = Clock(st, hw, cfg['clock_max_age_s'] * 1000)
        self.vals = [None] * nm

    def save(self):
        hw.mem_write(self.st.pack())

    def left_ms(self):
        return self.cfg['wake_timeout_s'] * 1000 - time.ticks_diff(time.ticks_ms(), self.t0)

    def feed(self):
        if self.wdt is not None:
            self.wdt.feed()

    def sample(self):
        st = self.st
        hw.sensors_init(self.cfg)
        v = hw.sample(self.vals)
        if all(x is None for x in v):
            log('nosensor')
            return
        t, q = self.clk.now()
        b, s = st.boot, st.seq
        st.seq += 1
        st.last_t = t
        self.buf.append(b, s, t, q, v)  # one RTC-memory write covers the reading and the new seq
        log('read', b, s, t, q, *v)

    def due(self):
        st, cfg = self.st, self.cfg
        if not self.clk.synced():
            return True  # get the time as early as possible: fewer readings need correcting
        if st.wakes % cfg['publish_every'] == 0:
            return True
        return st.count * 100 >= st.cap * cfg['publish_fill_pct'] or self.buf.log.pending() > 0

    def pairs(self, vals):
        out = []
        for i in range(len(vals)):
            if vals[i] is not None:
                out.append((self.names[i], (vals[i], self.dec[i])))
        return out

    def status_fields(self):
        st = self.st
        t, q = self.clk.now()
        f = [('boot', st.boot), ('t', t), ('clock', 's' if q == 's' else 'u'),
             ('sleep_s', self.cfg['sleep_s'])]
        if 'batt_mv' in self.names:
            v = self.vals[self.names.index('batt_mv')]
            if v is not None:
                f.append(('battery_mv', v))
        f.extend((('buf', self.buf.fill()), ('buf_cap', self.buf.capacity()), ('dropped', st.dropped),
                  ('fw', self.cfg['fw']), ('drift_ppm', (st.drift_ppb // 1000, 3))))
        return f

    def sync_clock(self):
        st, cfg = self.st, self.cfg
        if self.clk.synced() and self.clk.rtc_ms() - st.sync_rtc < cfg['sync_every_s'] * 1000:
            return
        import sntp
        for _ in range(2):  # bounded retry
            try:
                true = sntp.query(cfg['ntp_host'], cfg['ntp_port'], cfg['net_timeout_s'])
            except OSError as e:
                log('ntp', 'fail', e)
                continue
            step = self.clk.sync(true)
            self.save()
            log('ntp', 'step', step, 'drift_ppb', st.drift_ppb)
            return

    def publish(self):
        from uplink import Uplink
        cfg, st, buf = self.cfg, self.st, self.buf
        up = Uplink(cfg, self.left_ms, st, hw.wifi_dns())  # bounded by the wake; DNS cache in st
        up.connect()
        try:
            up.status('online', self.status_fields())
            bat = codec.Batcher(cfg['device'], buf=self.msgbuf)
            sent = 0
            final = False
            while self.left_ms() > _MARGIN_MS:
                self.feed()
                bat.reset()
                nlog = nring = 0
                held = more = False
                last_t = 0
                total = buf.fill()
                g = buf.pending(codec.MAX_READINGS + 1)
                for src, r in g:
                    if r is not None:
                        w = self.clk.fix(r)
                        if w is None:
                            held = True
                            break
                        if not bat.add((w[0], w[1], w[2], w[3], self.pairs(w[4]))):
                            more = True
                            break
                        if w[2] > last_t:
                            last_t = w[2]
                    if src == 0:
                        nlog += 1
                    else:
                        nring += 1
                g.close()
                if nlog + nring == 0:
                    break
                final = not held and not more and nlog + nring == total
                flushed = None
                if final:
                    t, q = self.clk.now()
                    flushed = t if q == 's' and t > last_t else last_t
                if bat.count or final:
                    msg = bat.finish(flushed)
                    up.publish(up.t_readings, msg)  # returns after PUBACK
                    log('pub', bat.count, len(msg), 'flushed', flushed)
                buf.consume(nlog, nring)  # only now do the readings leave the buffer
                sent += bat.count
                if final or held:
                    break
            if not final and buf.fill() == 0 and self.clk.synced():
                t, q = self.clk.now()
                up.publish(up.t_readings, codec.readings(cfg['device'], (), t))
                log('pub', 0, 'flushed', t)
            mem('publish')
            up.status('sleeping', self.status_fields())
            up.close(True)
            return sent
        finally:
            up.close(False)

    def run(self):
        st, cfg = self.st, self.cfg
        st.wakes += 1
        self.sample()
        self.feed()
        import backoff
        held = backoff.hold(st)  # after failed uplinks the radio stays off for a few wakes
        if held or not self.due():
            if held:
                log('net', 'backoff', st.net_skip, 'fails', st.fails)
            self.save()
            return
        gc.collect()
        import sntp  # noqa: F401  (load the network modules before the heap fragments)
        import mqtt  # noqa: F401
        import uplink  # noqa: F401
        import dns  # noqa: F401
        if not hw.wifi_connect(cfg['wifi_ssid'], cfg['wifi_password'], cfg['wifi_timeout_s'] * 1000):
            backoff.failed(st, cfg)
            self.save()
            log('wifi', 'down', st.fails, 'skip', st.net_skip)
            return
        self.feed()
        self.sync_clock()
        self.feed()
        try:
            n = self.publish()
            backoff.ok(st)
            log('sent', n, 'left', self.buf.fill())
        except OSError as e:
            backoff.failed(st, cfg)
            log('mqtt', 'fail', e, 'skip', st.net_skip)
        self.save()


def maintenance(cfg):
    try:
        import machine
        return machine.Pin(cfg['maint_pin'], machine.Pin.IN, machine.Pin.PULL_UP).value() == 0
    except (AttributeError, ValueError, OSError):
        return False


def main():
    t0 = time.ticks_ms()
    gc.collect()
    msgbuf = bytearray(4096)  # the message buffer first, while the heap is still unfragmented
    from config import CFG as cfg
    if maintenance(cfg):
        log('maintenance: not sleeping')
        return
    wdt = hw.watchdog((cfg['wake_timeout_s'] + 5) * 1000)
    sleep_ms = cfg['sleep_s'] * 1000
    try:
        Wake(cfg, t0, wdt, msgbuf).run()
    except KeyboardInterrupt:  # a host (mpremote) interrupted: stay awake for it
        raise
    except Exception as e:
        log('error', repr(e))
        sys.print_exception(e)
    hw.wifi_off()
    el = time.ticks_diff(time.ticks_ms(), t0)
    log('sleep', sleep_ms - el, 'awake_ms', el)
    mem('end')
    hw.deepsleep(max(1000, sleep_ms - el))

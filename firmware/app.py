# The wake cycle: wake, sample, buffer, publish every K wakes (or when the buffer passes a fill level),
# deep sleep. The whole wake is bounded by wake_timeout_s (checked between steps, sockets time out,
# and the watchdog catches the rest) and always ends in deep sleep, whatever went wrong.
import gc
import sys
import time
from micropython import const

from timebase import Clock  # the biggest module first, while the heap is least fragmented
from state import State
from buffer import Buffer, rec_size
import codec
import hw
import otaboot

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
    def __init__(self, cfg, t0, wdt, msgbuf, problems=(), rtcbuf=None):
        self.cfg = cfg
        self.t0 = t0
        self.wdt = wdt
        self.msgbuf = msgbuf
        self.problems = list(problems)  # [(config key, message)] from cfgcheck.check()
        self.names = ['temp_c', 'rh'] + [a[0] for a in cfg['adc']]
        self.dec = [2, 1] + [0 for _ in cfg['adc']]
        nm = len(self.names)
        st = State(cfg['rtc_mem'], rec_size(nm), rtcbuf)
        raw = hw.mem_read()
        ok = st.load(raw)
        lost = 0
        if not ok:
            pk = State.peek(raw)
            if pk is not None and pk[1] != st.rec:  # RTC memory is intact, but its records have another size
                lost = pk[2]
        woke = hw.woke_from_sleep()
        self.brown = hw.brownout()
        clk = Clock(st, hw, cfg['clock_max_age_s'] * 1000)
        back = ok and clk.went_back()  # the RTC was reset or set back: its era ends (kept on flash)
        new = back or not (ok and woke)
        if new:  # power-on, reset, crash, watchdog, brown-out, or a clock that went back: a new boot
            if not ok:  # RTC memory lost (power-on): the RTC lost its time too
                st.fresh()
            st.boot = bump_boot()
            st.seq = 0
            log('boot', st.boot, 'cause', hw.reset_cause(), 'rtcmem', ok, 'brownout', self.brown)
        if not ok or back:
            clk.begin_era()
            if back:
                log('clock', 'went back: new clock era from boot', st.boot)
        elif new and st.npts:
            clk.save_era()  # the same clock era goes on in a new boot
        if self.brown:
            st.brownouts += 1
            st.radio_skip = 4 * cfg['publish_every']  # the radio's current draw is what browns it out
        self.st = st
        self.buf = Buffer(st, nm, cfg['log_max'], self.save)
        lost += self.buf.log.discarded
        if lost:  # the metric count changed: what was buffered with the old one cannot be sent
            st.dropped += lost
            st.flags |= 1
            self.problems.append(('adc', 'the metric count changed: %d buffered readings dropped' % lost))
        self.clk = clk
        clk.before_drop = self.fix_before
        self.vals = [None] * nm
        self.acts = []  # actions a command asked for at an earlier wake (cmds.py): sync, status, update
        self.ack = None  # (id, reason) of the last command handled
        self.ota_note = ''  # what an update did this wake (ota.py)
        self.bad = None  # the build this board refuses (fw.bad, read for the status)
        for _, msg in self.problems:
            log('config', msg)

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
        raw = self.clk.stamp()  # raw RTC ms, quality 'n': mapped to Unix time when sent (timebase.py)
        b, s = st.boot, st.seq
        st.seq += 1
        st.last_t = raw
        self.buf.append(b, s, raw, 'n', v)  # one RTC-memory write covers the reading and the new seq
        log('read', b, s, raw, 'n', *v)

    def battery_mv(self):
        if 'batt_mv' in self.names:
            return self.vals[self.names.index('batt_mv')]
        return None

    def radio_allowed(self):
        """No radio after a brown-out (for a few publishing intervals) or below batt_low_mv: the
        readings stay buffered."""
        st = self.st
        mv = self.battery_mv()
        if mv is not None and mv < self.cfg['batt_low_mv']:
            log('power', 'low', mv, 'radio off')
            return False
        if st.radio_skip:
            st.radio_skip -= 1
            log('power', 'brownout', 'radio off for', st.radio_skip + 1, 'wakes')
            return False
        return True

    def due(self):
        st, cfg = self.st, self.cfg
        if self.acts or otaboot.TRIAL is not None:  # a command waits, or a new build must prove itself
            return True
        if not st.npts:
            # no time in this clock era yet: the backlog cannot go out; ask NTP at once after power-on,
            # later only on the publishing schedule (and its backoff)
            return st.ntp_fails == 0 or st.wakes % cfg['publish_every'] == 0
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
        f = [('boot', st.boot)]  # type: list  # (name, value) pairs of assorted types
        if q != 'n':
            f.append(('t', t))
        f.extend((('clock', 's' if q == 's' else 'u'), ('sleep_s', self.cfg['sleep_s'])))
        v = self.battery_mv()
        if v is not None:
            f.append(('battery_mv', v))
        f.extend((('buf', self.buf.fill()), ('buf_cap', self.buf.capacity()), ('dropped', st.dropped),
                  ('fw', otaboot.VERSION or self.cfg['fw']), ('drift_ppm', (st.drift_ppb, 3))))  # ppb -> ppm
        o, self.bad = otaboot.state()
        f.append(('ota', self.ota_note or o))  # always, '' when idle: a dashboard's last() then shows now
        if self.ack is not None:
            f.append(('ack', self.ack[0]))
            f.append(('ack_err', self.ack[1]))  # '' when it was taken
        if st.untimed:
            f.append(('untimed', st.untimed))
        if st.brownouts:
            f.append(('brownouts', st.brownouts))
        keys = [k for k, _ in self.problems]
        if st.flags & 1 and 'adc' not in keys:
            keys.append('adc')
        if keys:
            f.append(('cfg', ','.join(keys)[:64]))
        return f

    def news(self, got, t_cmd):
        """Whether what came on the subscriptions needs inbox.py: a command not handled before, a build
        neither running nor refused (both stay retained: most wakes find nothing new)."""
        for t in got:
            m = got[t]
            if t == t_cmd:
                if not (self.ack and ('"id":"%s"' % self.ack[0]).encode() in m):
                    return True
            else:
                b = m.find(b'"build":"')  # the manifest's build id, compared without parsing it
                b = m[b + 9:b + 73] if b >= 0 else b''
                if not (b == otaboot.BUILD.encode() or self.bad and b == self.bad.encode() and 'update' not in self.acts):
                    return True
        return False

    def fix_before(self, pts, upto):
        """The clock is about to drop its oldest sync point: every buffered reading of this era taken before
        raw RTC ms `upto` gets its time now, through pts (still all of them), and keeps it (buffer.freeze)."""
        st, buf = self.st, self.buf
        ring = []
        flash = []
        k = 0
        g = buf.pending(buf.fill())
        for src, r in g:
            if r is not None and r[3] == 'n' and r[0] >= st.era_boot and r[2] < upto:
                if src == 0:  # (those fixed before go along unchanged: freeze keeps what it is given)
                    w = buf.sent_as(r)
                    t, q = (w[2], w[3]) if w is not None else self.clk.map(pts, r[2])
                    flash.append((r[0], r[1], t, q))
                else:
                    t, q = self.clk.map(pts, r[2])
                    ring.append((k, t, q))
            if src == 1:
                k += 1
        g.close()
        if ring or flash:
            buf.freeze(ring, flash)
            log('fixed', len(ring) + len(flash))

    def sync_clock(self):
        st, cfg = self.st, self.cfg
        if 'sync' in self.acts:  # the sync command: NTP now, whatever the schedule and its backoff
            st.ntp_skip = 0
        elif not self.clk.need_sync(cfg['sync_every_s'] * 1000):
            return
        if st.ntp_skip:  # NTP failed lately: back off
            st.ntp_skip -= 1
            log('ntp', 'backoff', st.ntp_skip)
            return
        import sntp
        for _ in range(2):  # bounded retry
            try:
                true, rtt = sntp.query(cfg['ntp_host'], cfg['ntp_port'], cfg['ntp_timeout_s'])
            except OSError as e:
                log('ntp', 'fail', e)
                continue
            res = self.clk.sync(true, self.clk.raw(), rtt)
            st.ntp_fails = 0
            self.save()
            log('ntp', res, 'rtt', rtt, 'drift_ppb', st.drift_ppb)
            return
        st.ntp_fails = min(st.ntp_fails + 1, 8)
        st.ntp_skip = (1 << min(st.ntp_fails, 4)) - 1  # publishing wakes to skip: 1, 3, 7, 15
        self.save()

    def want_gateway_time(self):
        """Ask the gateway for its time when this era's NTP time has not been checked against it yet, when
        the era is timed by the gateway, or when NTP failed twice in a row and there is no recent NTP time."""
        st = self.st
        pts = st.points()
        if self.clk.checked() and not (pts and pts[-1][2]):
            if st.ntp_fails < 2:
                return False
            if pts and self.clk.raw() - pts[-1][0] <= self.clk.max_age:
                return False
        if st.gw_skip:  # it did not answer lately (an older gateway?): ask less often
            st.gw_skip -= 1
            return False
        return True

    def gateway_time(self, got, t0, raw0):
        """The gateway's answer to our 'online' status: {"v":1,"t":<its Unix ms when the status came>}.
        That instant lies between sending the status and receiving the answer; take the middle."""
        if got is None:
            self.st.gw_skip = 7
            self.st.flags |= 2  # timebase.CHECKED: nothing to check this era's NTP time against
            log('gwtime', 'none')
            return
        import json
        try:
            d = json.loads(got[1])
            t = d['t']
            if d.get('v') != 1 or type(t) is not int:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            log('gwtime', 'bad', got[1])
            return
        rtt = time.ticks_diff(got[0], t0)
        res = self.clk.sync(t, raw0 + rtt // 2, rtt, True)
        self.save()
        log('gwtime', res, 'rtt', rtt)

    def publish(self):
        from uplink import Uplink
        cfg, st, buf = self.cfg, self.st, self.buf
        up = Uplink(cfg, self.left_ms, st, hw.wifi_dns())  # bounded by the wake; DNS cache in st
        up.connect()
        try:
            ask = self.want_gateway_time()
            up.listen()  # the gateway's time, a command, an update's manifest
            t0, raw0 = time.ticks_ms(), self.clk.raw()
            up.status('online', self.status_fields())
            if ask:
                self.gateway_time(up.poll(3000), t0, raw0)
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
                ndrop = 0
                fz_ring = []  # the time each reading goes out with, kept for a re-send (buffer.freeze)
                fz_log = []
                for src, r in g:
                    if r is not None:
                        w = buf.sent_as(r) if src == 0 and r[3] == 'n' else None
                        if w is None:
                            w = self.clk.fix(r)
                        if w is None:  # this clock era has no time yet: it and all after it wait
                            held = True
                            break
                        if w is False:  # its time can never be known: dropped and counted, not sent
                            ndrop += 1
                        elif not bat.add((w[0], w[1], w[2], w[3], self.pairs(w[4]))):
                            more = True
                            break
                        else:
                            if r[3] == 'n':
                                if src == 0:
                                    fz_log.append((w[0], w[1], w[2], w[3]))
                                else:
                                    fz_ring.append((nring, w[2], w[3]))
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
                    flushed = t if q == 's' and t > last_t else (last_t or None)
                if bat.count or flushed is not None:
                    buf.freeze(fz_ring, fz_log)
                    msg = bat.finish(flushed)
                    up.publish(up.t_readings, msg)  # returns after PUBACK
                    log('pub', bat.count, len(msg), 'flushed', flushed)
                if ndrop:
                    st.dropped += ndrop
                    st.untimed += ndrop
                    log('untimed', ndrop)
                buf.consume(nlog, nring)  # only now do the readings leave the buffer
                sent += bat.count
                if final or held:
                    break
            if not final and buf.fill() == 0 and self.clk.synced():
                t, q = self.clk.now()
                up.publish(up.t_readings, codec.readings(cfg['device'], (), t))
                log('pub', 0, 'flushed', t)
            if otaboot.TRIAL is not None:  # a build on trial has published: keep it
                otaboot.confirm()
            if self.news(up.inbox, up.t_cmd):  # a new command, a new build's manifest (inbox.py)
                gc.collect()
                import inbox
                inbox.handle(self, up)
                del inbox
                for m in ('inbox', 'ota', 'cmds'):  # not needed again this wake: their code and the
                    sys.modules.pop(m, None)  # updater's buffers go back to the heap before the status is built
                gc.collect()
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
        held = backoff.hold(st) and otaboot.TRIAL is None  # after failed uplinks the radio stays off a few wakes
        power = self.radio_allowed()  # and after a brown-out, and on a low battery
        if held or not power or not self.due():
            if held:
                log('net', 'backoff', st.net_skip, 'fails', st.fails)
            self.save()
            return
        gc.collect()
        import sntp  # noqa: F401  (load the network modules before the heap fragments)
        import mqtt  # noqa: F401
        import uplink
        import dns  # noqa: F401
        uplink.prepare(cfg)  # the TLS context, while the heap is still whole
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
            if self.acts:  # done: cmd.do (cfgcheck.py) goes
                import os
                try:
                    os.remove('cmd.do')
                except OSError:
                    pass
            log('sent', n, 'left', self.buf.fill())
        except OSError as e:
            backoff.failed(st, cfg)
            log('mqtt', 'fail', e, 'skip', st.net_skip)
        self.save()


_MAINT_WDT_MS = const(3600000)


def maintenance(cfg):
    """True when maint_pin (never GPIO0, which at reset means the ROM bootloader) is held low. After a reset
    (not a deep-sleep wake) wait maint_window_ms first: a Ctrl-C from the host (mpremote) then raises
    KeyboardInterrupt, which main.py passes on to the REPL, before the watchdog was started."""
    ms = cfg.get('maint_window_ms') or 0
    if ms > 0 and not hw.woke_from_sleep():
        log('maintenance window', ms, 'ms: Ctrl-C for the REPL')
        time.sleep_ms(ms)
    pin = cfg.get('maint_pin')
    if not pin:
        return False
    try:
        import machine
        return machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP).value() == 0
    except (AttributeError, ValueError, OSError):
        return False


def main():
    t0 = time.ticks_ms()
    gc.collect()
    msgbuf = bytearray(4096)  # the message buffer first, while the heap is still unfragmented
    rtcbuf = bytearray(2048)  # and the RTC-memory image (cfgcheck.RTC_MEM_MAX)
    from config import CFG as cfg
    if not cfg.get('device'):
        cfg['device'] = hw.board_id()
    import cfgcheck
    acts, ack = cfgcheck.received(cfg)  # settings from the cmd topic, checked with the rest
    problems = cfgcheck.check(cfg)  # fixes what cannot work; the messages go to the REPL and the status
    del sys.modules['cfgcheck']  # not needed again in this wake: let its code be collected
    del cfgcheck
    if maintenance(cfg):
        for _, msg in problems:
            log('config', msg)
        log('maintenance: not sleeping')
        return
    wdt = hw.watchdog((cfg['wake_timeout_s'] + 5) * 1000)
    sleep_ms = cfg['sleep_s'] * 1000
    try:
        w = Wake(cfg, t0, wdt, msgbuf, problems, rtcbuf)
        w.acts, w.ack = acts, ack
        w.run()
    except KeyboardInterrupt:  # a host (mpremote) interrupted: stay awake for it; the ESP32's watchdog
        hw.watchdog(_MAINT_WDT_MS)  # cannot be stopped, only given a longer timeout (for a deploy)
        raise
    except Exception as e:
        log('error', repr(e))
        sys.print_exception(e)
    hw.wifi_off()
    el = time.ticks_diff(time.ticks_ms(), t0)
    log('sleep', sleep_ms - el, 'awake_ms', el)
    mem('end')
    hw.deepsleep(max(1000, sleep_ms - el))

# Checks the configuration at every start: fixes what cannot work and says what it changed. A module of
# its own so that main() can unload it once it has run (it is not needed again in the wake). Also reads
# what the cmd topic left on flash (cmds.py writes it): the settings to merge over the configuration first,
# the actions for this wake, the last command's acknowledgement.
RTC_MEM_MAX = 2048  # an ESP32's RTC slow memory for machine.RTC().memory()
CFG_FILE = 'cfg.json'
ACK_FILE = 'cmd.ack'  # '<id>\n<reason or nothing>'
DO_FILE = 'cmd.do'  # actions for the next wake, space-separated (app.py removes it once they are done)


def _read(name):
    try:
        with open(name) as f:
            return f.read()
    except OSError:
        return None


def received(cfg):
    """Merge the settings received on the cmd topic (cfg.json, checked by cmds.py) over cfg; return the
    actions for this wake and (id, reason) of the last command handled (or None)."""
    s = _read(CFG_FILE)
    if s:
        import json
        try:
            d = json.loads(s)
        except ValueError:
            d = None
        if isinstance(d, dict):
            cfg.update(d)
    s = _read(DO_FILE)
    acts = s.split() if s else []
    s = _read(ACK_FILE)
    if not s:
        return acts, None
    p = s.split('\n', 1)
    return acts, (p[0], p[1] if len(p) > 1 else '')


def check(cfg):
    """Make a configuration the board can run with, and say what was changed: [(key, message)].
    Checked at every start (cheap); app.py prints each message on the REPL and names the keys in the
    status ("cfg")."""
    out = []

    def fix(key, value, why):
        out.append((key, '%s %r %s: using %r' % (key, cfg.get(key), why, value)))
        cfg[key] = value

    for key, lo, dflt in (('sleep_s', 1, 300), ('publish_every', 1, 3), ('publish_fill_pct', 1, 50),
                          ('wifi_timeout_s', 1, 10), ('net_timeout_s', 1, 5), ('ntp_timeout_s', 1, 2),
                          ('log_max', 0, 2000), ('rtc_mem', 256, 2048), ('batt_low_mv', 0, 0)):
        v = cfg.get(key)
        if type(v) is not int or v < lo:
            fix(key, dflt, 'is not a whole number >= %d' % lo)
    if cfg['rtc_mem'] > RTC_MEM_MAX:
        fix('rtc_mem', RTC_MEM_MAX, '> %d bytes of RTC memory' % RTC_MEM_MAX)
    # app.py stops publishing 5 s before wake_timeout_s: leave room for Wi-Fi, NTP and a publish
    need = cfg['wifi_timeout_s'] + 2 * cfg['ntp_timeout_s'] + 2 * cfg['net_timeout_s'] + 8
    wt = cfg.get('wake_timeout_s')
    if type(wt) is not int or wt < need:
        fix('wake_timeout_s', need, 'leaves no time to publish (Wi-Fi + NTP + MQTT + margin)')
    return out

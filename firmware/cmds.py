# Settings and commands from the board's cmd topic (docs/protocol.md, "Commands"). The gateway's side
# (edgekit-ota cmd) publishes one retained JSON object there:
#   {"v":1,"id":"c-17","set":{"sleep_s":60,"publish_every":1},"do":["sync","status","update"]}
# The board reads it at a publishing wake (app.py), checks it whole, and either keeps it or refuses it with
# a reason; the status of that wake acknowledges it (`ack`: its id, `ack_err`: why it was refused). Settings
# live in cfg.json on flash (replaced atomically) and are merged over the configuration at the start of
# every later wake, before the configuration check; actions go to cmd.do and are carried out at the next
# wake. A command whose id was handled already (it stays retained) is not applied again.
import json
import os

from cfgcheck import ACK_FILE, CFG_FILE, DO_FILE, _read


def _write(name, text):
    with open(name + '.tmp', 'w') as f:
        f.write(text)
    os.rename(name + '.tmp', name)


# what may be changed at run time, with the range of values taken (integers only)
LIMITS = {
    'sleep_s': (10, 86400),
    'publish_every': (1, 100),
    'publish_fill_pct': (1, 100),
    'batt_low_mv': (0, 5000),
    'sync_every_s': (60, 86400),
    'clock_max_age_s': (600, 86400),
    'backoff_max_s': (0, 86400),
    'ota_trials': (1, 20),
}
ACTIONS = ('sync', 'status', 'update')


def check(d):
    """The reason a command is refused, or None; d is the decoded JSON."""
    if not isinstance(d, dict) or d.get('v') != 1:
        return 'v: not 1'
    st = d.get('set', {})
    if not isinstance(st, dict):
        return 'set: not an object'
    for k in st:
        v = st[k]
        if k not in LIMITS:
            return '%s: not a setting' % k
        lo, hi = LIMITS[k]
        if type(v) is not int:
            return '%s: not an integer' % k
        if v < lo or v > hi:
            return '%s: %d not in %d..%d' % (k, v, lo, hi)
    do = d.get('do', [])
    if not isinstance(do, list):
        return 'do: not a list'
    for a in do:
        if a not in ACTIONS:
            return 'do: %s unknown' % a
    for k in d:
        if k not in ('v', 'id', 'set', 'do'):
            return '%s: unknown key' % k
    return None


def handle(payload):
    """A message from the cmd topic that carries an id: keep it or refuse it, once per id. Returns the id
    and the reason it was refused ('' if taken), or None if it was handled before or has no usable id."""
    try:
        d = json.loads(payload)
    except ValueError:
        return None
    cid = d.get('id') if isinstance(d, dict) else None
    if not isinstance(cid, str) or not cid or len(cid) > 32:
        return None
    old = _read(ACK_FILE)
    if old is not None and old.split('\n', 1)[0] == cid:
        return None
    why = check(d)
    if why is None:
        st = d.get('set', {})
        if st:
            cur = {}
            s = _read(CFG_FILE)
            if s:
                try:
                    cur = json.loads(s)
                except ValueError:
                    cur = {}
            cur.update(st)
            _write(CFG_FILE, json.dumps(cur))
        do = d.get('do', [])
        if do:
            s = _read(DO_FILE)
            have = s.split() if s else []
            _write(DO_FILE, ' '.join(have + [a for a in do if a not in have]))
        why = ''
    _write(ACK_FILE, cid + '\n' + why[:60])
    return cid, why

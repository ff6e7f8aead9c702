# What came on the board's subscriptions at a publishing wake (uplink.listen): a new command on the cmd topic
# (cmds.py: kept for the next wake, or refused, and acknowledged in this wake's status) and the manifest of
# a build (ota.py: fetched while the wake has time). Loaded only when something came.
import gc

import otaboot


def log(*a):
    print('EK', *a)


def handle(w, up):
    """What came on the subscriptions: a new command (kept for the next wake, or refused) and the
    manifest of a build to fetch, while the wake has time."""
    msg = up.inbox.get(up.t_cmd)
    if msg is not None:
        import cmds
        r = cmds.handle(msg)
        if r is not None:
            w.ack = r
            log('cmd', r[0], 'refused: ' + r[1] if r[1] else 'taken')
    msg = up.inbox.get(up.t_ota[1]) or up.inbox.get(up.t_ota[0])
    if msg is None:
        return
    import json
    try:
        m = json.loads(msg)
        build = m['build']
    except (ValueError, KeyError, TypeError):
        w.ota_note = 'bad manifest'
        return
    if build == otaboot.BUILD or otaboot.TRIAL is not None:
        return
    gc.collect()
    import ota
    if 'update' in w.acts:
        ota.forgive()
    u = ota.Updater(up, w.cfg, w.left_ms, w.feed, w.msgbuf)  # the readings are out: lend it
    try:
        u.run(m)
        w.ota_note = u.note
    except (KeyError, TypeError, ValueError) as e:
        w.ota_note = 'bad manifest'
        log('ota', 'manifest', repr(e))
    except OSError as e:  # a chunk that did not come: the connection may still be good for the status
        w.ota_note = 'fetch failed'
        log('ota', 'fail', e)


# Which firmware build runs this wake, before anything else is imported (main.py calls select()).
#
# A build that arrived over the air lives in its own directory (fwa/ or fwb/, written by ota.py); the
# files at the root are the build scripts/deploy.py put there. The selector fw.sel says which one runs:
#   '<dir> <version> <build> <tries> <prev dir> <prev version> <prev build> <trials>'
# dir '-' is the root. tries -1: the build is confirmed (it has published). tries >= 0: it is on trial;
# every start counts one, and once `trials` starts have gone by without confirm() (a publish that the
# broker acknowledged), the previous build is selected again and the failed one written to fw.bad, which
# ota.py reads to refuse that build until the `update` command clears it.
#
# Every change is a whole new file renamed over the old (littlefs renames atomically), so a power loss at
# any step leaves either the old selector or the new one. This module is never replaced over the air: it
# is the part that must work for a rollback to work, so it stays small and imports nothing of the build.
import os
import sys

SEL = 'fw.sel'
BAD = 'fw.bad'
VERSION = None  # the running build's version (None: the root build; app.py then reports cfg['fw'])
BUILD = '-'
TRIAL = None  # (tries, trials) while the running build is on trial
ROLLED = None  # the version rolled back from at this start


def read():
    """The selector as a list of 8 strings, or None (no file, or a damaged one: run the root build)."""
    try:
        with open(SEL) as f:
            p = f.read().split()
    except OSError:
        return None
    if len(p) != 8:
        return None
    try:
        int(p[3])
        int(p[7])
    except ValueError:
        return None
    return p


def write(p):
    with open(SEL + '.tmp', 'w') as f:
        f.write(' '.join([str(x) for x in p]) + '\n')
    os.rename(SEL + '.tmp', SEL)


def _usable(d):
    if d == '-':
        return True
    try:
        os.stat(d)
        return True
    except OSError:
        return False


def select():
    """Put the selected build's directory first on sys.path; count a trial start, or roll back."""
    global VERSION, BUILD, TRIAL, ROLLED
    p = read()
    if p is None:
        return
    tries, trials = int(p[3]), int(p[7])
    if tries >= 0:
        if tries >= trials or not _usable(p[0]):
            with open(BAD + '.tmp', 'w') as f:
                f.write('%s %s rollback\n' % (p[2], p[1]))
            os.rename(BAD + '.tmp', BAD)
            ROLLED = p[1]
            p = [p[4], p[5], p[6], -1, '-', '-', '-', trials]
            print('EK ota rollback to', p[1])
        else:
            p[3] = tries + 1
            TRIAL = (tries + 1, trials)
        write(p)
    if p[0] != '-' and _usable(p[0]):
        sys.path.insert(0, p[0])
        VERSION = p[1]
        BUILD = p[2]
    elif p[1] != '-':
        VERSION = p[1]
        BUILD = p[2]


def confirm():
    """The build on trial has published: keep it. Here, not in ota.py: the wake that confirms a build has
    published its readings and fragmented the heap; loading ota.py's code then could fail for want of a block."""
    global TRIAL
    if TRIAL is None:
        return
    p = read()
    if p is not None and int(p[3]) >= 0:
        p[3] = -1
        write(p)
        print('EK ota confirmed', p[1])
    TRIAL = None


def state():
    """(the status's `ota` field, the build refused or None): the running build's trial, or the build this
    board refuses (rolled back, or a wrong hash: fw.bad) with why; '' when there is nothing to say."""
    if TRIAL is not None:
        return 'trial %d/%d' % TRIAL, None
    try:
        with open(BAD) as f:
            p = f.read().split()
        return ('%s %s' % (p[2], p[1]))[:64], p[0]
    except (OSError, IndexError):
        return '', None

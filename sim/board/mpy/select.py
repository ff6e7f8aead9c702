# Host shim for `select`: poll() on the ESP32 shim's sockets (_espnet.py). The unix port's poll cannot see
# through a Python subclass of its socket (it takes the instance for the native object and reports POLLNVAL
# at once, so every wait became a busy loop); the ESP32's poll waits on lwIP's select. Here a shim socket is
# registered by its file descriptor and the results name the objects that were registered, as on the board.
import _espnet

_real = _espnet._builtin('select')

POLLIN = _real.POLLIN
POLLOUT = _real.POLLOUT
POLLERR = _real.POLLERR
POLLHUP = _real.POLLHUP


def _key(obj):
    return obj.fileno() if isinstance(obj, _espnet.socket) else obj


class _Poll:
    def __init__(self):
        self._p = _real.poll()
        self._objs = {}

    def register(self, obj, eventmask=POLLIN | POLLOUT):
        k = _key(obj)
        self._objs[k] = obj
        self._p.register(k, eventmask)

    def modify(self, obj, eventmask):
        self._p.modify(_key(obj), eventmask)

    def unregister(self, obj):
        k = _key(obj)
        self._objs.pop(k, None)
        self._p.unregister(k)

    def poll(self, timeout=-1):
        return [(self._objs.get(r[0], r[0]),) + tuple(r[1:]) for r in self._p.poll(timeout)]

    def ipoll(self, timeout=-1, flags=0):
        return iter(self.poll(timeout))


def poll():
    return _Poll()


def select(rlist, wlist, xlist, timeout=None):
    return _real.select(rlist, wlist, xlist, timeout)

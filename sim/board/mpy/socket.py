# Host shim: the ESP32 port's socket semantics, see _espnet.py.
from _espnet import *  # noqa: F401,F403

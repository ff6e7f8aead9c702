# Host shim for `esp32`: the few calls the firmware or its tools might make.
import _simboard as _sb

WAKEUP_ALL_LOW = 0
WAKEUP_ANY_HIGH = 1


def raw_temperature():
    return 120


def wake_on_ext0(pin, level):
    pass


def wake_on_ext1(pins, level):
    pass


class NVS:
    def __init__(self, ns):
        self.ns = ns


def mcu_temperature():
    return int(_sb.value('mcu_temp_c', 40.0))

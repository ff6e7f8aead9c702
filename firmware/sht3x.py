# Sensirion SHT3x (SHT30/31/35) temperature and humidity over I2C: single-shot, high repeatability,
# no clock stretching (command 0x2400), CRC-8 checked. Values come back as fixed-point integers:
# centi-degrees Celsius and deci-percent relative humidity.
from micropython import const
import time

ADDR = const(0x44)
_MEASURE_HIGH = b'\x24\x00'
_SOFT_RESET = b'\x30\xa2'


def crc8(buf, start, n):
    c = 0xFF
    for i in range(start, start + n):
        c ^= buf[i]
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


class SHT3x:
    def __init__(self, i2c, addr=ADDR):
        self.i2c = i2c
        self.addr = addr
        self.raw = bytearray(6)

    def reset(self):
        self.i2c.writeto(self.addr, _SOFT_RESET)
        time.sleep_ms(2)

    def measure(self):
        """(centi_deg_c, deci_pct_rh); raises OSError on a bus error or a bad CRC."""
        self.i2c.writeto(self.addr, _MEASURE_HIGH)
        time.sleep_ms(16)  # max 15.5 ms for high repeatability
        self.i2c.readfrom_into(self.addr, self.raw)
        r = self.raw
        if crc8(r, 0, 2) != r[2] or crc8(r, 3, 2) != r[5]:
            raise OSError(5)  # EIO: the bus delivered a corrupted frame
        st = r[0] << 8 | r[1]
        srh = r[3] << 8 | r[4]
        # T = -45 + 175 * St / 65535 ; RH = 100 * Srh / 65535, in integer arithmetic with rounding
        t = (17500 * st + 32767) // 65535 - 4500
        rh = (1000 * srh + 32767) // 65535
        return t, rh

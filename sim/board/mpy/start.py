# Start a simulated board the way the ESP32 does after a reset or a wake: run boot.py, then main.py,
# from the current directory (the board's flash).
import sys

import socket as _socket

# `import usocket` (older libraries) would reach the unix port's built-in socket, past the ESP32 shim
sys.modules['usocket'] = _socket

for _name in ('boot.py', 'main.py'):
    try:
        _f = open(_name)
    except OSError:
        continue
    _src = _f.read()
    _f.close()
    exec(compile(_src, _name, 'exec'), {'__name__': '__main__'})

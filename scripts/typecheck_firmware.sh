#!/bin/sh
# Type-check firmware/ against the MicroPython ESP32 stubs, never against the gateway's environment.
#   sh scripts/typecheck_firmware.sh            install the stubs if needed, then run mypy over firmware/*.py
#   sh scripts/typecheck_firmware.sh --install  only install the stubs (scripts/setup.sh does this)
# The stubs (micropython-esp32-stubs and the micropython-stdlib-stubs it pulls in, which stand in for
# CPython's typeshed) go to .run/esp32-stubs/ (ignored by git); firmware/mypy.ini points mypy at them.
# PYTHON (default python3) must have mypy; the stubs are installed with its pip.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
STUBS="$ROOT/.run/esp32-stubs"
PIN='micropython-esp32-stubs==1.29.*'
STAMP="$STUBS/.edgekit-pin"

if [ ! -f "$STUBS/machine.pyi" ] || [ ! -d "$STUBS/stdlib" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$PIN" ]; then
    rm -rf "$STUBS" "$STUBS.tmp"
    mkdir -p "$ROOT/.run"
    if ! "$PYTHON" -m pip install -q --disable-pip-version-check --target "$STUBS.tmp" "$PIN" >"$ROOT/.run/esp32-stubs.log" 2>&1; then
        cat "$ROOT/.run/esp32-stubs.log" >&2
        echo "could not install $PIN into $STUBS" >&2
        exit 1
    fi
    echo "$PIN" >"$STUBS.tmp/.edgekit-pin"
    mv "$STUBS.tmp" "$STUBS"
    echo "$PIN -> $STUBS"
fi
[ "${1:-}" = "--install" ] && exit 0

cd "$ROOT/firmware"
# mypy.ini is found in the current directory; the host-only tools (sim/board) are not part of this check
exec "$PYTHON" -m mypy --config-file mypy.ini ./*.py

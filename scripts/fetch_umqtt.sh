#!/bin/sh
# Fetch umqtt.simple for the MicroPython unix port into .run/mpy-lib/ (ignored by git).
# On a real board use `mpremote mip install umqtt.simple` instead (scripts/deploy.py does).
# The PyPI sdist's metadata makes a plain `pip download` fail after unpacking, so keep the
# unpacked build tree (--no-clean) and copy the module out of it.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.run/mpy-lib"
if [ -f "$DEST/umqtt/simple.py" ]; then echo "umqtt.simple already in $DEST"; exit 0; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/dl"
TMPDIR="$TMP" pip download --no-clean --no-deps --no-binary :all: -d "$TMP/dl" micropython-umqtt.simple \
    >"$TMP/pip.log" 2>&1 || true
SRC=$(find "$TMP" -path '*umqtt/simple.py' | head -n 1)
if [ -z "$SRC" ]; then
    # Fall back to unpacking a downloaded sdist, if pip got that far.
    TGZ=$(find "$TMP" -name 'micropython-umqtt.simple-*.tar.gz' | head -n 1)
    [ -n "$TGZ" ] && tar -xzf "$TGZ" -C "$TMP" && SRC=$(find "$TMP" -path '*umqtt/simple.py' | head -n 1)
fi
if [ -z "$SRC" ]; then cat "$TMP/pip.log" >&2; echo "could not fetch umqtt.simple" >&2; exit 1; fi
mkdir -p "$DEST/umqtt"
cp "$SRC" "$DEST/umqtt/simple.py"
[ -f "$DEST/umqtt/__init__.py" ] || : >"$DEST/umqtt/__init__.py"
echo "umqtt.simple -> $DEST/umqtt/simple.py"

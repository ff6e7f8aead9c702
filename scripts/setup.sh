#!/usr/bin/env bash
# Idempotent set-up of a Debian 12 / Raspberry Pi OS (bookworm) machine for edgekit:
#   1. the Debian packages of the services (mosquitto, mosquitto-clients, influxdb, victoria-metrics, socat),
#      chromium (headless, renders the simulator's report page in a test) and a JDK 17 (the Flink tests),
#      installed with apt-get when run as root, otherwise the exact sudo command is printed;
#   2. .venv with edgekit installed editable plus its dev extras (redone when pyproject.toml changes).
# The services themselves are run by scripts/services.py, never by the distribution's systemd units.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# mosquitto lives in /usr/sbin, which an ordinary user's PATH lacks on Debian.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# binary -> Debian package; "unit:port" of the distribution service each package ships.
BINARIES=(mosquitto mosquitto_pub influxd victoria-metrics socat chromium javac valgrind)
declare -A PACKAGE=(
    [mosquitto]=mosquitto [mosquitto_pub]=mosquitto-clients [influxd]=influxdb
    [victoria-metrics]=victoria-metrics [socat]=socat [chromium]=chromium [javac]=openjdk-17-jdk-headless
    [valgrind]=valgrind
)
declare -A UNIT_PORT=([mosquitto]=1883 [influxdb]=8086 [victoria-metrics]=8428)

command -v python3 >/dev/null || die "python3 not found; install it with: sudo apt-get install -y python3 python3-venv"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "edgekit needs Python >= 3.11, found $(python3 --version 2>&1)"

# --- 1. Debian packages ---------------------------------------------------------------------------------
missing=()
for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("${PACKAGE[$bin]}")
done
if [[ ! -x .venv/bin/python ]] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
fi

systemd_running() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; }

installed_now=()
if ((${#missing[@]} == 0)); then
    step "system packages: all present"
elif ((EUID != 0)); then
    printf 'error: missing Debian packages: %s\nInstall them with:\n  sudo apt-get update && sudo apt-get install -y %s\nthen run this script again.\n' \
        "${missing[*]}" "${missing[*]}" >&2
    exit 1
else
    step "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    unavailable=()
    for pkg in "${missing[@]}"; do
        candidate=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [[ -n "$candidate" && "$candidate" != "(none)" ]] || unavailable+=("$pkg")
    done
    if ((${#unavailable[@]})); then
        die "Debian package(s) not available from this machine's apt sources: ${unavailable[*]}.
victoria-metrics is packaged from Debian 12 (bookworm) on; older Debian / Raspberry Pi OS releases lack it,
and the test suite needs it (the VictoriaMetrics write target is tested against a real server).
Upgrade to bookworm, or install VictoriaMetrics so that 'victoria-metrics' is on PATH, then re-run."
    fi
    step "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null
    installed_now=("${missing[@]}")
fi

# The packages' own services (if systemd runs them) would hold the demo's ports: switch off those we just
# installed; only warn about ones that were already there.
if systemd_running; then
    for unit in "${!UNIT_PORT[@]}"; do
        systemctl is-active --quiet "$unit" 2>/dev/null || continue
        if [[ " ${installed_now[*]} " == *" $unit "* ]]; then
            step "disabling the distribution's $unit service (edgekit runs its own on port ${UNIT_PORT[$unit]})"
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        else
            printf 'warning: the system %s service is running and holds port %s; stop it with\n  sudo systemctl disable --now %s\nor start edgekit'"'"'s services on other ports (see scripts/services.py --help)\n' \
                "$unit" "${UNIT_PORT[$unit]}" "$unit" >&2
        fi
    done
fi

# --- 2. virtualenv --------------------------------------------------------------------------------------
stamp=.venv/.edgekit-installed
if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv ($(python3 --version 2>&1))"
    rm -rf .venv
    python3 -m venv .venv
fi
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    step "pip install -e '.[dev]' into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
else
    step ".venv is up to date"
fi
# --- optional compiled engine (begin) -------------------------------------------------------------------
# mypyc-compiled hot modules of gateway/engine, gateway/anomaly, gateway/cep and line protocol's
# (gateway/lineproto.py, gateway/points.py) (scripts/build_compiled.py),
# built only where a C compiler exists; without one (e.g. a Raspberry Pi without gcc) the pure-Python modules
# run: same results, slower. EDGEKIT_COMPILE=0 skips the build; python scripts/build_compiled.py --clean removes it.
if [[ "${EDGEKIT_COMPILE:-1}" == 0 ]]; then
    step "compiled engine, detectors, patterns and line protocol: skipped (EDGEKIT_COMPILE=0)"
elif ! command -v "${CC:-cc}" >/dev/null 2>&1 || ! .venv/bin/python -c 'import mypyc, setuptools' 2>/dev/null; then
    step "compiled engine, detectors, patterns and line protocol: no C compiler or mypyc here - the pure-Python modules are used"
elif .venv/bin/python -c 'from gateway._compiled import COMPILED, state
raise SystemExit(any(state(package) != "compiled" for package in COMPILED))' 2>/dev/null; then
    step "compiled engine, detectors, patterns and line protocol: up to date"
else
    mkdir -p .run
    if .venv/bin/python scripts/build_compiled.py >.run/build_compiled.log 2>&1; then
        step "compiled engine, detectors, patterns and line protocol: built (ENGINE_BUILD, ANOMALY_BUILD, CEP_BUILD and LINES_BUILD are 'compiled')"
    else
        printf 'warning: compiled build failed (see .run/build_compiled.log); the pure-Python modules are used\n' >&2
    fi
fi
# --- optional compiled engine (end) ---------------------------------------------------------------------
# --- Apache Flink (scale-out tests, docs/scale-out.md) ---------------------------------------------------
# The apache-flink wheel carries the bin/ scripts (standalone JobManager and TaskManagers, `flink run`) and
# apache-flink-libraries the runtime's jars (flink-dist, the table planner, flink-cep, the files and JSON
# connectors); installed without their Python dependencies (PyFlink's API pins apache-beam and pandas < 2.3,
# which the tests do not use: they submit SQL with scripts/flink/SqlRunner.java). Java 17 runs it. Only the
# scale-out tests need it; the Pi path never does. EDGEKIT_FLINK=0 skips it.
FLINK_VERSION=2.3.0
if [[ "${EDGEKIT_FLINK:-1}" == 0 ]]; then
    step "Apache Flink: skipped (EDGEKIT_FLINK=0)"
elif [[ "$(.venv/bin/python -c 'from importlib.metadata import version as v; print(v("apache-flink"), v("apache-flink-libraries"))' 2>/dev/null)" == "$FLINK_VERSION $FLINK_VERSION" ]]; then
    step "Apache Flink $FLINK_VERSION: present"
else
    step "pip install apache-flink==$FLINK_VERSION (runtime and scripts, no PyFlink dependencies) into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
fi
# --- 3. firmware test tools -----------------------------------------------------------------------------
# micropython-esp32-stubs for the firmware's type check, in .run/esp32-stubs (not in .venv)
PYTHON=.venv/bin/python sh scripts/typecheck_firmware.sh --install >/dev/null && step "micropython-esp32-stubs for the firmware type check: ready"
if [[ -z "${EDGEKIT_MICROPYTHON:-}" && ! -x .venv/bin/micropython ]] && ! command -v micropython >/dev/null; then
    printf 'warning: no MicroPython unix port for %s; the firmware tests need one: build it (docs/firmware.md)\n' \
        "$(uname -m)" >&2
    printf '         and set EDGEKIT_MICROPYTHON=/path/to/micropython\n' >&2
fi
step "setup done"

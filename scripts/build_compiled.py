"""Build (or remove) the optional compiled engine: the hot modules of ``gateway/engine`` through mypyc.

    python scripts/build_compiled.py          # build: needs a C compiler, mypy (ships mypyc) and setuptools
    python scripts/build_compiled.py --clean  # remove it: the pure-Python engine is used again

The pure-Python modules stay the reference and the source: mypyc compiles them as they are (they are
``mypy --strict`` clean) into extension modules next to them (``gateway/engine/<module>.cpython-*.so``)
plus their shared library (``gateway/engine/_native__mypyc.cpython-*.so``), all git-ignored.
``gateway/engine/_compiled.json`` records the sha256 of each compiled source; ``gateway.engine`` uses the
compiled modules only while the sources still match it (otherwise it warns and imports the .py files), and
never when ``EDGEKIT_ENGINE=pure`` is set. ``gateway.engine.ENGINE_BUILD`` says which one was loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "gateway" / "engine"
# keep in step with COMPILED_MODULES in gateway/engine/_build.py
MODULES = ("aggregates", "accs", "windows", "outputs", "operators", "engine")
GROUP = "gateway.engine._native"  # the shared library lives in the package: no top-level module
STAMP = ENGINE / "_compiled.json"


def built_files() -> list[Path]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    files = [ENGINE / f"{m}{suffix}" for m in [*MODULES, "_native__mypyc"]]
    return [*files, STAMP]


def clean() -> None:
    for f in [*ENGINE.glob("*.so"), *ROOT.glob("gateway_engine__mypyc*.so"), STAMP]:  # and an older layout's
        f.unlink(missing_ok=True)
    shutil.rmtree(ROOT / "build" / "mypyc", ignore_errors=True)


def build() -> None:
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as e:  # pragma: no cover - depends on the machine
        sys.exit(f"cannot build the compiled engine: {e} (pip install mypy setuptools)")
    clean()
    os.chdir(ROOT)  # mypyc names modules by their path from here
    paths = [f"gateway/engine/{m}.py" for m in MODULES]
    # strip_asserts=False: the operators assert that watermarks never go back, compiled or not
    exts = mypycify(paths, opt_level="3", strip_asserts=False, group_name=GROUP, target_dir="build/mypyc")
    dist = Distribution({"name": "edgekit-engine-compiled", "ext_modules": exts})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = True
    cmd.build_temp = "build/mypyc/temp"
    dist.run_command("build_ext")
    sources = {m: hashlib.sha256((ENGINE / f"{m}.py").read_bytes()).hexdigest() for m in MODULES}
    STAMP.write_text(json.dumps({"python": sys.implementation.cache_tag, "sources": sources}, indent=1) + "\n")
    missing = [str(f) for f in built_files() if not f.exists()]
    if missing:
        sys.exit(f"build incomplete, missing: {missing}")
    print(f"compiled engine built: {', '.join(MODULES)} ({sys.implementation.cache_tag})")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = ap.parse_args()
    if args.clean:
        clean()
        print("compiled engine removed: the pure-Python modules are used")
    else:
        build()


if __name__ == "__main__":
    main()

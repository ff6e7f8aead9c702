"""Build (or remove) the optional compiled modules: the window engine's, the anomaly detector's, the pattern
matcher's and line protocol's hot modules through mypyc.

    python scripts/build_compiled.py          # build: needs a C compiler, mypy (ships mypyc) and setuptools
    python scripts/build_compiled.py --clean  # remove it: the pure-Python modules are used again

The pure-Python modules stay the reference and the source: mypyc compiles them as they are (they are
``mypy --strict`` clean) into extension modules next to them (``gateway/engine/<module>.cpython-*.so``,
``gateway/anomaly/...``, ``gateway/cep/...``, and ``gateway/lineproto...``, ``gateway/points...``) plus each
package's shared library (``gateway/<package>/_native__mypyc.cpython-*.so``, ``gateway/_native__mypyc...``), all
git-ignored; ``gateway._compiled.COMPILED`` lists the modules. ``gateway/<package>/_compiled.json`` records the
sha256 of each compiled source; each package uses its compiled modules only while its sources still match it
(otherwise it warns and imports the .py files), and never when ``EDGEKIT_ENGINE=pure`` is set.
``gateway.engine.ENGINE_BUILD``, ``gateway.anomaly.ANOMALY_BUILD``, ``gateway.cep.CEP_BUILD`` and
``gateway.LINES_BUILD`` say which one was loaded.

The C code is compiled with ``-ffp-contract=off``: a compiler may otherwise fuse a multiplication and an
addition into one instruction with a single rounding (GCC does by default wherever the target has one, as
64-bit ARM has: a Raspberry Pi with a 64-bit OS), and the compiled modules' floats would no longer be the interpreter's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway._compiled import COMPILED, STAMP, package_dir, source_hashes  # noqa: E402

CFLAGS = ["-ffp-contract=off"]


def built_files(package: str) -> list[Path]:
    here = package_dir(package)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return [*(here / f"{m}{suffix}" for m in [*COMPILED[package], "_native__mypyc"]), here / STAMP]


def clean() -> None:
    for package in COMPILED:
        here = package_dir(package)
        for f in [*here.glob("*.so"), here / STAMP]:
            f.unlink(missing_ok=True)
    for f in ROOT.glob("gateway_engine__mypyc*.so"):  # an older layout's
        f.unlink()
    shutil.rmtree(ROOT / "build" / "mypyc", ignore_errors=True)


def build() -> None:
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as e:  # pragma: no cover - depends on the machine
        sys.exit(f"cannot build the compiled modules: {e} (pip install mypy setuptools)")
    clean()
    os.chdir(ROOT)  # mypyc names modules by their path from here
    exts = []
    for package, modules in COMPILED.items():
        folder = package.replace(".", "/")
        # one group per package: its shared library lives in the package (no top-level module), and a
        # package whose build is stale does not take the other's with it.
        # strip_asserts=False: the operators assert that watermarks never go back, compiled or not
        group = mypycify(
            [f"{folder}/{m}.py" for m in modules],
            opt_level="3",
            strip_asserts=False,
            group_name=f"{package}._native",
            target_dir=f"build/mypyc/{package}",
        )
        exts += group
    if sys.platform != "win32":
        for ext in exts:
            ext.extra_compile_args = [*ext.extra_compile_args, *CFLAGS]
    dist = Distribution({"name": "edgekit-compiled", "ext_modules": exts})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = True
    cmd.build_temp = "build/mypyc/temp"
    dist.run_command("build_ext")
    for package in COMPILED:
        stamp = {"python": sys.implementation.cache_tag, "sources": source_hashes(package)}
        (package_dir(package) / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    missing = [str(f) for package in COMPILED for f in built_files(package) if not f.exists()]
    if missing:
        sys.exit(f"build incomplete, missing: {missing}")
    for package, modules in COMPILED.items():
        print(f"compiled {package}: {', '.join(modules)} ({sys.implementation.cache_tag})")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = ap.parse_args()
    if args.clean:
        clean()
        print("compiled modules removed: the pure-Python modules are used")
    else:
        build()


if __name__ == "__main__":
    main()

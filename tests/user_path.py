"""Running ``edgekit-gateway`` as a user types it, for the tests of a newcomer's path (issue 21)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def gateway(*args: str, env: dict[str, str] | None = None, process: bool = False) -> Done:
    """``edgekit-gateway ARGS`` with the user's environment: this process's, less its EDGEKIT_* variables, plus
    ``env``. In this process (``gateway.cli.main`` with that argv and environment), or as its own process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEKIT_")}
    if process:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            capture_output=True,
            text=True,
            env={**base, "PYTHONPATH": str(REPO), **(env or {})},
            cwd=REPO,
            timeout=60,
        )
        return Done(done.returncode, done.stdout, done.stderr)
    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**base, **(env or {})})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Done(code, out.getvalue(), err.getvalue())

"""Where the gateway's event loop stalls: loaded into the benchmark's gateway by ``bench_e2e.py latency --stalls DIR``
(this folder put first on its ``PYTHONPATH``), never by the gateway itself.

With ``STALLPROBE_OUT`` set, every event-loop callback that runs longer than ``STALL_S`` is recorded with its
task's coroutine and, for one over ``SAMPLE_S``, the loop thread's stack taken by a watcher thread while it still
runs (what is running, not where it started); and every pass of the cyclic garbage collector over ``GC_S``, with
its generation. At exit (the gateway's clean stop) they are written to ``<STALLPROBE_OUT>.<pid>.json``:
``{"stalls": [[start_s, seconds, task, stack or null], ...], "gc": [[start_s, seconds, generation], ...]}``.
Times are ``time.perf_counter()`` of the gateway's process. The cost: a Python wrapper around every callback.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("STALLPROBE_OUT")
STALL_S = 0.010
SAMPLE_S = 0.008
GC_S = 0.003

if _OUT:
    import asyncio.events
    import atexit
    import gc
    import json
    import sys
    import threading
    import time
    import traceback
    from typing import Any

    _clock = time.perf_counter
    _now: dict[str, Any] = {"handle": None, "t0": 0.0, "thread": None, "stack": None}
    _stalls: list[tuple[float, float, str, list[str] | None]] = []
    _collections: list[tuple[float, float, int]] = []
    _run = asyncio.events.Handle._run

    def _timed_run(self: asyncio.events.Handle) -> None:
        _now["thread"] = threading.get_ident()
        _now["stack"] = None
        t0 = _now["t0"] = _clock()  # before the handle: the watcher never pairs it with the last callback's start
        _now["handle"] = self
        try:
            _run(self)
        finally:
            took = _clock() - t0
            _now["handle"] = None
            if took > STALL_S:
                callback = self._callback  # type: ignore[attr-defined]
                name = repr(callback)[:80]
                task = getattr(callback, "__self__", None)
                if task is not None and hasattr(task, "get_coro"):
                    name = "task " + task.get_coro().__qualname__
                _stalls.append((t0, took, name, _now["stack"]))

    asyncio.events.Handle._run = _timed_run  # type: ignore[method-assign]

    def _watch() -> None:
        while True:
            time.sleep(0.002)
            handle = _now["handle"]
            if handle is None or _now["stack"] is not None or _clock() - _now["t0"] <= SAMPLE_S:
                continue
            frame = sys._current_frames().get(_now["thread"])
            if frame is not None and _now["handle"] is handle:
                frames = traceback.extract_stack(frame)[-14:]
                _now["stack"] = [f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in frames]

    threading.Thread(target=_watch, name="stallprobe", daemon=True).start()
    _gc_t0 = [0.0]

    def _collector(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _gc_t0[0] = _clock()
        elif _clock() - _gc_t0[0] > GC_S:
            _collections.append((_gc_t0[0], _clock() - _gc_t0[0], info["generation"]))

    gc.callbacks.append(_collector)

    def _write() -> None:
        with open(f"{_OUT}.{os.getpid()}.json", "w", encoding="utf-8") as fh:
            json.dump({"stalls": _stalls, "gc": _collections}, fh)

    atexit.register(_write)

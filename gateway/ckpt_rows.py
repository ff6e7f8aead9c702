"""A checkpoint's state in rows: one per key (device or site), an order row and the rest (the global part).

The bulk of a gateway's state is per key: each window operator's per-key maps, the watermark tracker's, the
dedup's, the pattern operator's and the anomaly detectors' per-device maps (the univariate detectors, a list,
stay in the global part). :func:`split_state` takes each such map out of the state and files its entries under
their key: the row of key ``k`` is ``{container: {field: value}}`` with the value each map holds for ``k``. The
global part is what is left, with those maps emptied; the order row gives each map's keys in their order (dict
order is state: the window operators visit keys in it). :func:`join_state` is the exact inverse.

The pipeline's admitted devices and their metric names, and the univariate anomaly detectors (a list of
``[device, metric, state]``, filed under the device as ``{"ad": {"d": {metric: state}}}``, their order in the
order row's ``"det"``) are per key too.

A checkpoint stores each row's JSON text compressed and rewrites only the rows of the keys whose state changed
since the checkpoint before (``StateStore.checkpoint``), so between two checkpoints one device's readings cost
its own row, not the whole state.

A sliding window whose windows span more than ``CHUNK_PANES`` panes (a 60 s window every second: 60) keeps a
key's panes in rows of their own, a chunk of panes a row (*chunk rows*): a key whose window moved on a pane or
two then costs its row and its newest chunk, not all its panes. The engine numbers the chunks on a fixed grid
from the window's offset and writes out only the chunks from the oldest pane changed since the key's last
checkpoint (``Engine.snapshot(rows=...)``: its state holds ``"pane_chunks"``, the numbers of the chunks that
hold its panes, and ``"pane_from"``, its first pane's start, in place of ``"panes"``, and ``"pane_new"``, those
chunks' panes). :func:`split_rows` makes each of those a row; the others stay as stored. A chunk whose oldest panes
were dropped since it was stored still holds them: :func:`join_state` puts the chunks' panes back from
``pane_from`` on. The gateway takes the two halves apart: :func:`split_order` of a snapshot
taken with ``order=True`` (every key, no values: the global part and the order row) and :func:`split_rows` of
snapshots taken with ``keys`` (the rows of those keys); :func:`split_state` does both for a whole snapshot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec

__all__ = [
    "ORDER",
    "chunk_index",
    "chunk_owner",
    "chunk_rows_of",
    "dumps_row",
    "encode_row",
    "join_state",
    "key_names",
    "rows_gone",
    "split_order",
    "split_rows",
    "split_state",
]

ORDER: Final = ""
"""The order row's name; a key's row is named ``"k" + key``, a chunk row of its panes ``"p..."``
(:func:`_chunk_name`)."""

_CHUNKS: Final = "pane_chunks"
_FROM: Final = "pane_from"
_NEW: Final = "pane_new"

dumps_row = json.JSONEncoder(separators=(",", ":")).encode
"""A row's JSON text as the standard library writes it: the reference :func:`encode_row` falls back to."""

FAST_ROWS: bool = os.environ.get("EDGEKIT_ENGINE", "") != "pure"
"""Whether :func:`encode_row` tries msgspec's encoder first (not with ``EDGEKIT_ENGINE=pure``)."""

_fast_encode = msgspec.json.Encoder().encode
_fast_decode = msgspec.json.Decoder().decode


def encode_row(row: Any) -> bytes:
    """A row's JSON text (UTF-8) as a checkpoint stores it: what ``json.loads`` reads back is what it reads from
    :func:`dumps_row`'s text, the same values of the same types, floats to the bit.

    msgspec's encoder writes it about seven times as fast, but not every value as ``json`` does: a NaN or an
    infinity becomes ``null``, a dict's int key a string. So its text is decoded again and compared with the row
    (a third of the time ``json`` takes); any difference, or anything it cannot encode (a lone surrogate), and the
    row is written by ``json``. Its floats are the shortest text that reads back to the same bits, always with a
    ``.`` or an exponent, as ``json``'s are (``tests/gateway/test_ckpt_encode.py`` holds it to :func:`dumps_row`).

    For rows of plain values, as snapshots are made (``dict``, ``list``, ``str``, ``int``, ``float``, ``bool``,
    ``None``; the test checks a gateway's rows hold nothing else): the comparison does not see a dict's order, and
    for a dict subclass that iterates in another order than it stores (an ``OrderedDict`` after ``move_to_end``)
    msgspec writes the stored order and ``json`` the iterated one.
    """
    if FAST_ROWS:
        try:
            text = _fast_encode(row)
            if _fast_decode(text) == row:
                return text
        except (TypeError, ValueError, OverflowError, UnicodeError, msgspec.MsgspecError, RecursionError):
            pass
    return dumps_row(row).encode()


_ALL: Final = None


def _containers(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], tuple[str, ...] | None]]:
    """``(id, container, fields)`` for each part of ``state`` whose fields ``fields`` (None: every dict-valued
    one) are maps by key."""
    pipeline = state.get("pipeline")
    if not isinstance(pipeline, dict):
        return
    engine = pipeline.get("engine")
    if isinstance(engine, dict):
        tracker = engine.get("tracker")
        if isinstance(tracker, dict):
            yield "t", tracker, _ALL
        windows = engine.get("windows")
        if isinstance(windows, dict):
            for name, op in windows.items():
                if isinstance(op, dict):
                    yield "w" + name, op, _ALL
        early = engine.get("early")  # windows with early triggers (gateway/engine/early.py)
        if isinstance(early, dict):
            for name, e in early.items():
                if isinstance(e, dict):
                    yield "e" + name, e, ("pend", "prov")
    yield "p", pipeline, ("devices", "metric_names")
    dedup = pipeline.get("dedup")
    if isinstance(dedup, dict):
        yield "d", dedup, ("devices",)
    cep = pipeline.get("cep")
    if isinstance(cep, dict):
        yield "c", cep, ("keys",)
        if isinstance(cep.get("tracker"), dict):
            yield "ct", cep["tracker"], ("state", "sites")
    anomaly = pipeline.get("anomaly")
    if isinstance(anomaly, dict):
        yield "a", anomaly, ("multi", "recent", "sites")
    joins = pipeline.get("joins")  # interval joins (gateway/joins): keys ``j:<join>:<key>``, the tracker by device
    if isinstance(joins, dict):
        yield "j", joins, ("keys",)
        if isinstance(joins.get("tracker"), dict):
            yield "jt", joins["tracker"], ("state", "sites")


def _detectors(state: dict[str, Any]) -> tuple[dict[str, Any] | None, list[Any]]:
    """The anomaly part of ``state`` and its detectors list (``[]`` when none)."""
    pipeline = state.get("pipeline")
    anomaly = pipeline.get("anomaly") if isinstance(pipeline, dict) else None
    if isinstance(anomaly, dict) and isinstance(anomaly.get("detectors"), list):
        return anomaly, anomaly["detectors"]
    return None, []


def _chunk_name(chunk: int | str, cid: str, key: str) -> str:
    """The row of chunk number ``chunk`` of ``key``'s panes in container ``cid`` (``"w" + window``); its parts are
    told apart whatever the names hold."""
    return f"p{chunk}:{len(cid)}:{cid}{key}"


def chunk_owner(name: str) -> str | None:
    """The name of the key's row that a chunk row belongs to (None: ``name`` is not a chunk row's)."""
    if not name.startswith("p"):
        return None
    _, rest = name.split(":", 1)
    n, rest = rest.split(":", 1)
    return "k" + rest[int(n) :]


def chunk_index(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each key's chunk rows among the rows ``names``, by the key's row name (``"k" + key``)."""
    out: dict[str, list[str]] = {}
    for name in names:
        owner = chunk_owner(name)
        if owner is not None:
            out.setdefault(owner, []).append(name)
    return {owner: tuple(chunks) for owner, chunks in out.items()}


def _window_keys(row: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(container id, the key's state)`` of each window in a key's row."""
    for cid, c in row.items():
        ks = c.get("keys") if cid.startswith("w") and isinstance(c, dict) else None
        if isinstance(ks, dict):
            yield cid, ks


def chunk_rows_of(name: str, row: dict[str, Any]) -> set[str]:
    """The chunk rows that key row ``name`` (``"k" + key``) names: those its state is put back from."""
    out: set[str] = set()
    for cid, ks in _window_keys(row):
        if _CHUNKS in ks:
            out.update(_chunk_name(n, cid, name[1:]) for n in ks[_CHUNKS])
    return out


def rows_gone(
    stored: Iterable[str], index: dict[str, tuple[str, ...]], live: set[str], taken: dict[str, set[str]]
) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The stored rows no longer part of the checkpoint, and each key's chunk rows after it (:func:`chunk_index`'s
    form). ``stored``: the names of the rows stored, those written now included; ``index``: each key's chunk rows as
    stored before; ``live``: the rows of the keys the order row names (and the order row); ``taken``: the key rows
    written now, each with the chunk rows it names. A chunk row lives while its key does, unless the key's row was
    written again without naming it. Only the index is looked at for chunk rows: none is parsed again."""
    gone = [n for n in stored if not n.startswith("p") and n not in live]
    after = dict(index)
    for owner in [o for o in after if o not in live]:
        gone.extend(after.pop(owner))
    for owner, names in taken.items():
        gone.extend(n for n in after.get(owner, ()) if n not in names)
        if names:
            after[owner] = tuple(names)
        else:
            after.pop(owner, None)
    return gone, after


def split_order(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(global part, order row)`` of ``state`` (emptied in place: the global part). The maps' values are not
    looked at: ``state`` may be a snapshot taken with ``order=True``."""
    lists: list[list[str]] = []
    seen: dict[tuple[str, ...], int] = {}
    refs: dict[str, dict[str, int]] = {}
    for cid, cont, only in _containers(state):
        for field, value in cont.items():
            if not isinstance(value, dict) or (only is not None and field not in only):
                continue
            keys = list(value)
            t = tuple(keys)
            i = seen.get(t)
            if i is None:
                i = seen[t] = len(lists)
                lists.append(keys)
            refs.setdefault(cid, {})[field] = i
            cont[field] = {}
    order: dict[str, Any] = {"lists": lists, "refs": refs}
    anomaly, dets = _detectors(state)
    if anomaly is not None:
        order["det"] = [[d[0], d[1]] for d in dets]
        anomaly["detectors"] = []
    return state, order


def split_rows(state: dict[str, Any]) -> dict[str, Any]:
    """The rows (by name, ``"k" + key``) of the keys whose entries ``state``'s maps hold: a whole snapshot, or one
    taken with ``keys`` (the rows of those keys that have state; a key with none has no row)."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for cid, cont, only in _containers(state):
        for field, value in cont.items():
            if not isinstance(value, dict) or (only is not None and field not in only):
                continue
            for k, v in value.items():
                row = rows.get("k" + k)
                if row is None:
                    row = rows["k" + k] = {}
                c = row.get(cid)
                if c is None:
                    c = row[cid] = {}
                c[field] = v
    for device, metric, det in _detectors(state)[1]:
        row = rows.get("k" + device)
        if row is None:
            row = rows["k" + device] = {}
        row.setdefault("ad", {}).setdefault("d", {})[metric] = det
    for name, row in list(rows.items()):  # a sliding window's chunks of panes written out: a row each
        for cid, ks in _window_keys(row):
            if _NEW in ks:
                for n, panes in ks.pop(_NEW).items():
                    rows[_chunk_name(n, cid, name[1:])] = panes
    return rows


def key_names(order: dict[str, Any]) -> set[str]:
    """Every key the order row names."""
    names: set[str] = set()
    for keys in order["lists"]:
        names.update(keys)
    for d, _ in order.get("det", ()):
        names.add(d)
    return names


def split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(global part, rows)``: rows by name (``"k" + key`` and :data:`ORDER`). Empties the maps in ``state``
    (which becomes the global part): pass a snapshot, not live state."""
    rows = split_rows(state)
    glob, order = split_order(state)
    out: dict[str, Any] = dict(rows)
    out[ORDER] = order
    return glob, out


def _join_panes(rows: dict[str, Any], key: str, cid: str, ks: dict[str, Any]) -> dict[str, Any]:
    """A sliding key's state with its panes back from its chunk rows, from its first pane's start on, in the place
    of ``"pane_chunks"`` (the fields in the engine's order)."""
    start = ks.get(_FROM)
    panes: list[Any] = []
    for n in ks[_CHUNKS]:
        chunk = rows.get(_chunk_name(n, cid, key))
        if not isinstance(chunk, list):
            raise ValueError(f"the checkpoint's row of chunk {n!r} of key {key!r}'s panes in {cid} is missing")
        for pane in chunk:
            if not isinstance(pane, list) or not pane or not isinstance(pane[0], int) or not isinstance(start, int):
                raise ValueError(f"the checkpoint's row of chunk {n!r} of key {key!r}'s panes in {cid} is damaged")
            if pane[0] >= start:
                panes.append(pane)
    return {("panes" if f == _CHUNKS else f): (panes if f == _CHUNKS else v) for f, v in ks.items() if f != _FROM}


def join_state(state: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """The state :func:`split_state` took apart (``state`` is filled in place). ``ValueError`` if the rows do
    not fit it (a row missing, a map the state does not have)."""
    order = rows.get(ORDER)
    if not isinstance(order, dict):
        raise ValueError("the checkpoint's order row is missing")
    lists, refs = order["lists"], order["refs"]
    conts = {cid: cont for cid, cont, _ in _containers(state)}
    for cid, fields in refs.items():
        cont = conts.get(cid)
        if cont is None:
            raise ValueError(f"the checkpoint's rows name a part {cid!r} that its state does not have")
        for field, i in fields.items():
            m: dict[str, Any] = {}
            for k in lists[i]:
                row = rows.get("k" + k)
                if not isinstance(row, dict) or field not in row.get(cid, {}):
                    raise ValueError(f"the checkpoint's row of key {k!r} is missing or lacks {cid}.{field}")
                v = row[cid][field]
                if field == "keys" and isinstance(v, dict) and _CHUNKS in v:
                    v = _join_panes(rows, k, cid, v)
                m[k] = v
            cont[field] = m
    det = order.get("det")
    if det is not None:
        anomaly, _ = _detectors(state)
        if anomaly is None:
            raise ValueError("the checkpoint's rows hold anomaly detectors that its state does not have")
        dets: list[Any] = []
        for device, metric in det:
            row = rows.get("k" + device)
            try:
                dets.append([device, metric, row["ad"]["d"][metric]])  # type: ignore[index]
            except (KeyError, TypeError):
                raise ValueError(f"the checkpoint's row of key {device!r} lacks the detector of {metric!r}") from None
        anomaly["detectors"] = dets
    return state

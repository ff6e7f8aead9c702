"""The start-up check for a WAL file left by another database reads the WAL as SQLite does: a frame counts only
when its salts and its cumulative checksum are right (https://www.sqlite.org/fileformat.html#the_write_ahead_log).

After a SIGKILL while SQLite restarts its WAL from the beginning, a frame header for page 1 with the current
salts can sit in front of a page left by the previous generation (SQLite writes the header and the page
separately); SQLite ignores that frame (its checksum is wrong). Counting it made the gateway call its own
state file damaged (exit 3) after a plain SIGKILL (seen in tests/reliability/test_crash.py)."""

from __future__ import annotations

import struct
from pathlib import Path

from gateway.state import APPLICATION_ID, StateStore, wal_identity


def _wal_with_frames(tmp_path: Path) -> tuple[Path, bytes, tuple[int, int] | None]:
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.db.execute("PRAGMA wal_autocheckpoint=0")
    store.db.execute("PRAGMA user_version = 12345")  # page 1 into the WAL, committed
    wal = Path(f"{path}-wal")
    data = wal.read_bytes()
    found = wal_identity(wal)
    store.db.close()
    return wal, data, found


def test_a_committed_first_page_is_read(tmp_path: Path) -> None:
    _, _, found = _wal_with_frames(tmp_path)
    assert found == (APPLICATION_ID, 12345)


def test_a_frame_header_in_front_of_a_stale_page_is_not_a_first_page(tmp_path: Path) -> None:
    wal, data, found = _wal_with_frames(tmp_path)
    assert found == (APPLICATION_ID, 12345)
    page_size = int.from_bytes(data[8:12], "big")
    salts = data[16:24]
    # a frame for page 1 with the current salts, a commit size, a made-up checksum, and a page of zeros behind it
    header = struct.pack(">II", 1, 1) + salts + b"\x00" * 8
    wal.write_bytes(data + header + b"\x00" * page_size)
    assert wal_identity(wal) == (APPLICATION_ID, 12345)  # SQLite ignores the torn frame; so does the check


def test_frames_after_a_broken_checksum_are_ignored(tmp_path: Path) -> None:
    wal, data, _ = _wal_with_frames(tmp_path)
    page_size = int.from_bytes(data[8:12], "big")
    # break the checksum chain at the first frame: no frame after it counts
    first = bytearray(data)
    first[32 + 24 + 200] ^= 0xFF
    wal.write_bytes(bytes(first))
    frames = (len(data) - 32) // (24 + page_size)
    assert frames >= 1
    assert wal_identity(wal) is None

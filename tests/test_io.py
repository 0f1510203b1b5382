"""Atomic writes (elusive.io)."""

from __future__ import annotations

import os
import stat

import pytest

from elusive.io import atomic_path, atomic_write_text


def test_atomic_writes_get_the_umask_mode_without_changing_the_umask(tmp_path, monkeypatch):
    """Files get the mode a plain open gives (0666 less the umask), and the process umask is
    never set, not even to read it (other threads may create files meanwhile)."""
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *args: pytest.fail("os.umask was called"))
        path = atomic_write_text(tmp_path / "a" / "f.txt", "hi\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 == stat.S_IMODE(plain.stat().st_mode)
    assert path.read_text() == "hi\n"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]

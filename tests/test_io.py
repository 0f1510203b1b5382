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


def test_remove_temp_files_takes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    from elusive.io import _new_file_beside, remove_temp_files

    left = [_new_file_beside(tmp_path / "log.json", ".tmp")]  # as atomic_path makes them
    (tmp_path / "sub").mkdir()
    left.append(_new_file_beside(tmp_path / "sub" / "fig.png", ".png"))
    keep = [tmp_path / ".gitignore", tmp_path / "log.json", tmp_path / ".notes.tmp"]
    for path in keep:
        path.write_text("x")
    assert remove_temp_files(tmp_path) == 1 and left[1].exists()
    assert remove_temp_files(tmp_path, recursive=True) == 1
    assert not any(p.exists() for p in left) and all(p.exists() for p in keep)

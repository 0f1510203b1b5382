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


def test_only_files_with_elusive_s_marker_count_as_temp_files(tmp_path):
    """A user's file named like a temp file (12 hex digits and all) is kept; what elusive's
    writers leave (a temp file, a temp folder as training saves an epoch to) goes."""
    from elusive.io import _new_file_beside, remove_temp_files

    docs = tmp_path / "docs"
    docs.mkdir()
    users = [docs / ".thesis.0123456789ab.tex", tmp_path / ".log.json.0123456789ab.tmp"]
    for path in users:
        path.write_text("mine")
    left = _new_file_beside(docs / "fig.png", ".png")
    assert remove_temp_files(tmp_path, recursive=True) == 1
    assert not left.exists() and all(path.read_text() == "mine" for path in users)

    from elusive.io import TEMP_MARK, temp_beside

    folder = temp_beside(tmp_path / "epoch-1")
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "adapter.bin").write_text("half")
    assert TEMP_MARK in left.name and TEMP_MARK in folder.name
    assert remove_temp_files(tmp_path) == 1 and not folder.exists()
    assert all(path.read_text() == "mine" for path in users)


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_an_output_path_that_is_no_regular_file_is_refused_and_kept(tmp_path, kind):
    """A FIFO (a special file, as a device is) or a symbolic link where an output goes: every
    output check and the atomic write refuse it in one line, and it stays as it was."""
    from elusive.io import OutputError, check_out_dir, check_out_file

    target = tmp_path / "user.txt"
    target.write_text("keep me\n")
    out = tmp_path / "out.jsonl"
    if kind == "fifo":
        os.mkfifo(out)
        message = "is a special file"
    else:
        out.symlink_to(target)
        message = "is a symbolic link"
    for write in (
        lambda: check_out_file(out),
        lambda: check_out_dir(tmp_path, ("out.jsonl",)),
        lambda: atomic_write_text(out, "new\n"),
    ):
        with pytest.raises(OutputError, match=f"^{out}: {message}"):
            write()
    assert stat.S_ISFIFO(out.lstat().st_mode) if kind == "fifo" else out.is_symlink()
    assert target.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "user.txt"]


def test_a_folder_lock_refuses_a_second_holder_and_takes_over_a_dead_one(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from elusive.io import LOCK_FILE, OutputError, folder_lock

    out = tmp_path / "run"
    with folder_lock(out):
        holder = json.loads((out / LOCK_FILE).read_text())
        assert holder == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(OutputError, match=f"^{out} is in use by process {os.getpid()}; "):
            with folder_lock(out):
                pass
        assert (out / LOCK_FILE).exists()  # the refused one took nothing away
    assert not out.exists()  # released, and the folder it made is empty: gone too

    out.mkdir()
    (out / "kept").write_text("x")
    with pytest.raises(RuntimeError), folder_lock(out):
        raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["kept"]  # released on errors too

    live = {"pid": os.getppid(), "host": socket.gethostname()}  # alive, not this process
    (out / LOCK_FILE).write_text(json.dumps(live))
    with pytest.raises(OutputError, match=f"in use by process {os.getppid()}; .* remove "):
        with folder_lock(out):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({**live, "pid": dead.pid}))
    with folder_lock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b'{"stages": {}', "invalid JSON"), (b"\xff{}", "not UTF-8"), (b'{"a": "\\ud800"}', "")],
)
def test_a_damaged_run_manifest_is_one_error_naming_it(tmp_path, content, reason):
    from elusive.experiment.config import RunConfig
    from elusive.experiment.runs import Run
    from elusive.io import CorpusError

    (tmp_path / "run.json").write_bytes(content)
    with pytest.raises(CorpusError, match=f"^{tmp_path / 'run.json'}: {reason}") as caught:
        Run(RunConfig(), tmp_path).open(echo=lambda line: None)
    assert len(str(caught.value).splitlines()) == 1
    assert (tmp_path / "run.json").read_bytes() == content  # nothing rewritten


def _plain_mode(folder) -> int:
    """The mode a plain open gives a new file here (0666 cut by the umask)."""
    import os
    import stat

    probe = folder / "probe"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def test_plain_modes_opens_what_a_private_temp_file_closed(tmp_path):
    import stat

    from elusive.io import plain_modes

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "model.safetensors").chmod(0o600)  # what safetensors leaves
    (folder / "config.json").write_text("{}")
    plain_modes(folder)
    want = _plain_mode(tmp_path)
    assert want != 0o600
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {want}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

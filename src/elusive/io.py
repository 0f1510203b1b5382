"""File I/O shared by every stage: atomic writes, JSONL, text hashes, output-path checks, and
the errors and warning about corpus input.

Every file elusive writes goes through `atomic_path` (a temp file beside the target, renamed
when complete), so a reader sees the old file or the whole new one, never half of it. Temp names
carry elusive's own marker (`TEMP_MARK`), so removing what a killed writer left never touches a
user's file; outputs are regular files (a device, FIFO or link there is refused, never
replaced); a folder being written is held by one process at a time (`folder_lock`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from elusive.errors import ElusiveError


class CorpusError(ElusiveError):
    """Bad corpus input; the message names the file, line or field."""


class OutputError(CorpusError):
    """An output path that cannot be written (a file where a folder must go, or the reverse)."""


class DroppedDataWarning(UserWarning):
    """Input skipped or cut on purpose (unanswerable questions, over-long texts): the warning
    counts it, so nothing is lost silently."""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- JSONL I/O


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically: a temp file beside `path`, renamed when complete."""
    return atomic_write_text(
        path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )


def name_failed_write(exc: BaseException, path: str | Path) -> None:
    """Give an OSError that names no file the name of `path`, what was being written: a failed
    write (disk full) names none, and the CLI's one error line should say where."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


def os_reason(exc: OSError) -> str:
    """An OSError's reason on one line, lower-case like elusive's other messages."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on success it becomes `path` (mode as a
    plain `open` would give), on error it is removed, so readers see the old file or the whole
    new one. ``suffix`` keeps the extension writers such as matplotlib look at. Something other
    than a regular file at `path` (a device, FIFO, socket or symbolic link) is refused: the
    rename would replace it."""
    path = Path(path)
    _check_regular(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        name_failed_write(exc, path)
        raise


TEMP_MARK = "elusive-tmp"
"""In the name of every temp file and folder elusive writes, ``.NAME.elusive-tmp-<12 hex>``
and a suffix: what `remove_temp_files` removes carries it, so no user's file is taken for one."""

_TEMP_NAME = re.compile(rf"\..+\.{TEMP_MARK}-[0-9a-f]{{12}}(\.[A-Za-z0-9]+)?")


def temp_beside(path: str | Path, suffix: str = "") -> Path:
    """A fresh marked temp name beside `path` (nothing is created)."""
    path = Path(path)
    return path.parent / f".{path.name}.{TEMP_MARK}-{secrets.token_hex(6)}{suffix}"


def _new_file_beside(path: Path, suffix: str) -> Path:
    """Create an empty file with a fresh temp name beside `path`. Created with mode 0666, which
    the kernel cuts by the umask, so it gets the mode a plain `open` gives without reading the
    process-wide umask (setting it to read it races with other threads)."""
    for _ in range(100):
        tmp = temp_beside(path, suffix)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temp file name beside it")


def plain_modes(folder: str | Path) -> None:
    """Give every file directly in `folder` the mode a plain `open` gives (0666 cut by the
    umask). safetensors writes its files through a private temp file, mode 0600, so a saved
    model or adapter would otherwise be readable by its owner alone, unlike every other output."""
    folder = Path(folder)
    probe = _new_file_beside(folder / "mode", "")
    try:
        mode = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
    for path in folder.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def remove_temp_files(folder: str | Path, recursive: bool = False) -> int:
    """Remove the temp files and folders elusive leaves when its process is killed (SIGKILL
    runs no cleanup): names with `TEMP_MARK`, in `folder` (and below it, if `recursive`). Call
    it where no other process is writing. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    return _remove_temps(found)


def remove_temps_of(path: str | Path) -> int:
    """Remove the temp files a killed `atomic_path` left for `path` (marked, beside it; none of
    another file's). Returns how many were removed."""
    path = Path(path)
    return _remove_temps(path.parent.glob(f".{glob.escape(path.name)}.{TEMP_MARK}-*"))


def foreign_entries(folder: str | Path) -> list[Path]:
    """What `folder` holds besides elusive's own lock file and temp files, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name != LOCK_FILE and not _TEMP_NAME.fullmatch(p.name)
    )


def _remove_temps(found: Iterable[Path]) -> int:
    stale = [p for p in found if _TEMP_NAME.fullmatch(p.name) and not p.is_symlink()]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)  # gone already when it was inside a removed folder
    return len(stale)


def _check_regular(path: Path) -> None:
    """Refuse something at output path `path` that a rename would replace but is no regular
    file elusive wrote: a symbolic link, a device, a FIFO or a socket (folders are refused by
    the callers, with their own words)."""
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISLNK(mode):
        raise OutputError(f"{path}: is a symbolic link; elusive writes regular files only")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OutputError(
            f"{path}: is a special file (device, FIFO or socket), not a regular file to write"
        )


def check_out_dir(path: str | Path, files: Sequence[str] = ()) -> Path:
    """Refuse, before any work, an output folder that cannot be made: `path` or a parent of it
    is a file, or one of the `files` to be written in it is a folder, a symbolic link or a
    special file (device, FIFO, socket). Returns `path`."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if folder.is_dir():
                break
            if folder == path:
                raise OutputError(f"{path}: is a file, not a folder to write into")
            raise OutputError(f"{path}: cannot be made as a folder: {folder} is a file")
    for name in files:
        if (path / name).is_dir() and not (path / name).is_symlink():
            raise OutputError(f"{path / name}: is a folder, so it cannot be written as a file")
        _check_regular(path / name)
    return path


def check_out_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file path that is a folder, a symbolic link or a
    special file (device, FIFO, socket), or lies under a file."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise OutputError(f"{path}: is a folder; give a file path to write")
    _check_regular(path)
    check_out_dir(path.parent)
    return path


def check_apart(
    outputs: Iterable[str | Path], inputs: Mapping[str, str | Path | None], flag: str = "--out"
) -> None:
    """Refuse, before any work, an output path that is one of the inputs, lies inside an input
    folder, or (an output folder) holds an input: writing it would overwrite or change what is
    read, and a run folder's refresh removes what it holds. `inputs` are named by the option or
    config key that gives them, `flag` is the option that gives the outputs. Paths are compared
    resolved, so links and ``..`` hide no match."""
    for out in outputs:
        target = Path(out).resolve()
        for name, source in inputs.items():
            if source is None:
                continue
            read = Path(source).resolve()
            if target == read or (target.exists() and read.exists() and target.samefile(read)):
                raise OutputError(
                    f"{out}: is also the input {name}; writing it would overwrite it: "
                    f"choose another {flag}"
                )
            if read.is_relative_to(target):
                raise OutputError(
                    f"{name} {source}: lies inside the output folder {out}, which elusive "
                    f"writes: move it or choose another {flag}"
                )
            if target.is_relative_to(read):
                raise OutputError(
                    f"{out}: lies inside the input folder {name} {source}: choose another {flag}"
                )


# --------------------------------------------------------------------------- folder lock

LOCK_FILE = ".elusive.lock"
"""The lock file of a folder being written: the holder's pid and host (`folder_lock`)."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold `folder` (made if missing) for this process while it writes there, so a second
    process refuses in one line instead of removing or overwriting the first one's work.

    The lock file, created with O_EXCL, names the holder's pid and host, and the holder keeps
    an exclusive `flock` on it while it lives; the kernel drops that lock when the process dies,
    however it dies, so a lock left by a killed process (its pid dead, or no one holding it) is
    taken over. Released on leaving the block, also on errors; a folder it made that is still
    empty then goes too, so work that failed before writing leaves nothing. Yields `folder`."""
    folder = check_out_dir(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock, fd = folder / LOCK_FILE, None
    try:
        fd = _take_lock(folder, lock)
        yield folder
    finally:
        if fd is not None:
            lock.unlink(missing_ok=True)  # while still held: a waiting process finds it gone
            os.close(fd)
        if made and not any(folder.iterdir()):
            with suppress(OSError):  # filled meanwhile by another process: it stays
                folder.rmdir()


def _take_lock(folder: Path, lock: Path) -> int:
    import fcntl  # POSIX only: imported where it is used, so the rest of elusive.io is not

    me = {"pid": os.getpid(), "host": socket.gethostname()}
    _check_regular(lock)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            made = True
        except FileExistsError:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)  # never a link's target
            except FileNotFoundError:  # released meanwhile: try again
                continue
            made = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(_in_use(folder, lock, holder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed it between our open and flock: try again
            os.close(fd)
            continue
        holder = {} if made else _holder(fd)
        mine = (holder.get("pid"), holder.get("host")) == (me["pid"], me["host"])
        if holder and not mine and _alive(holder, me["host"]):  # mine: a former life's pid
            os.close(fd)
            raise OutputError(_in_use(folder, lock, holder))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as exc:  # a full disk: the lock names no holder, so it must go
            lock.unlink(missing_ok=True)
            os.close(fd)
            name_failed_write(exc, lock)
            raise
        return fd


def _holder(fd: int) -> dict[str, Any]:
    """The pid and host a lock file names ({} if it names none: a writer killed mid-write)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return {}
    ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and holder["pid"] > 0
    return holder if ok else {}


def _alive(holder: dict[str, Any], host: str) -> bool:
    """Whether the process a lock names may still run: on this host, whether its pid lives; on
    another (a shared file system) that cannot be known, so it counts as alive."""
    if holder.get("host") != host:
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # no pid at all
        return False
    return True


def _in_use(folder: Path, lock: Path, holder: dict[str, Any]) -> str:
    who = f"process {holder.get('pid', '?')}"
    if holder.get("host") and holder["host"] != socket.gethostname():
        who += f" on {holder['host']}"
    return (
        f"{folder} is in use by {who}; wait for it to finish, or remove {lock} if no elusive "
        "runs there"
    )


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def read_text(path: Path) -> str:
    """The UTF-8 text of a file, without a leading byte-order mark (editors on Windows write
    one); a missing, undecodable or too large file is a CorpusError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except MemoryError:
        raise CorpusError(f"{path}: too large to read into memory") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a line that is not a JSON object
    of text (see `parse_json`) is a CorpusError."""
    path = Path(path)
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = parse_json(line, f"{path}:{number}")
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def read_json(path: str | Path) -> Any:
    """The JSON of a file elusive reads back (a manifest, a split, a log): a missing,
    undecodable or invalid file is a CorpusError naming it, never a traceback."""
    path = Path(path)
    try:
        return parse_json(read_text(path), str(path))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None


def parse_json(text: str, where: str) -> Any:
    """`text` parsed as JSON. Invalid JSON raises json's JSONDecodeError, for the caller to say
    where (a line of a file, a position in it); valid JSON that Python cannot hold (nested past
    the recursion limit, an integer past the digit limit, too large for memory) or that holds
    no text (a lone surrogate such as ``"\\ud800"``, which no UTF-8 file can be written with)
    is a CorpusError naming `where`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise CorpusError(f"{where}: JSON nested too deeply") from None
    except MemoryError:
        raise CorpusError(f"{where}: JSON too large to read into memory") from None
    except ValueError as exc:  # from int(): Python's limit on the digits of an integer
        detail = str(exc).split(";")[0]  # without the advice to raise the limit
        raise CorpusError(f"{where}: unreadable JSON ({detail})") from None
    if "\\u" in text:  # text read as UTF-8 holds no surrogate: only an escape makes one
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end]
            raise CorpusError(f"{where}: {bad!r} is a lone surrogate, not text") from None
    return obj

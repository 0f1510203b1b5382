"""File I/O shared by every stage: atomic writes, JSONL, text hashes, output-path checks, and
the errors and warning about corpus input.

Every file elusive writes goes through `atomic_path` (a temp file beside the target, renamed
when complete), so a reader sees the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ElusiveError


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


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on success it becomes `path` (mode as a
    plain `open` would give), on error it is removed, so readers see the old file or the whole
    new one. ``suffix`` keeps the extension writers such as matplotlib look at."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write (disk full) names no file: name the target
        raise


def _new_file_beside(path: Path, suffix: str) -> Path:
    """Create an empty file with a fresh name beside `path`. Created with mode 0666, which the
    kernel cuts by the umask, so it gets the mode a plain `open` gives without reading the
    process-wide umask (setting it to read it races with other threads)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: no free temp file name beside it")


def remove_temp_files(folder: str | Path, recursive: bool = False) -> int:
    """Remove the temp files `atomic_path` leaves when its process is killed (SIGKILL runs no
    cleanup): ``.NAME.<12 hex digits><suffix>`` in `folder` (and below it, if `recursive`).
    Call it where no other process is writing. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    stale = [p for p in found if p.is_file() and _TEMP_NAME.fullmatch(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.[A-Za-z0-9]+")


def check_out_dir(path: str | Path, files: Sequence[str] = ()) -> Path:
    """Refuse, before any work, an output folder that cannot be made: `path` or a parent of it
    is a file, or one of the `files` to be written in it is a folder. Returns `path`."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if folder.is_dir():
                break
            if folder == path:
                raise OutputError(f"{path}: is a file, not a folder to write into")
            raise OutputError(f"{path}: cannot be made as a folder: {folder} is a file")
    for name in files:
        if (path / name).is_dir():
            raise OutputError(f"{path / name}: is a folder, so it cannot be written as a file")
    return path


def check_out_file(path: str | Path) -> Path:
    """Refuse, before any work, an output file path that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file path to write")
    check_out_dir(path.parent)
    return path


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

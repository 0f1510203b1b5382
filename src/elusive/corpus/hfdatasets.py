"""Hugging Face `datasets` as corpora: a `save_to_disk` folder, or a parquet, JSON or CSV file.

The `datasets` package is an optional extra (``pip install 'elusive[datasets]'``), imported only
when such a corpus is read. `elusive.corpus.records.read_corpus` makes the rows into records.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elusive.io import CorpusError

DATASET_SUFFIXES = (".parquet", ".json", ".csv")
"""Files read through `datasets.load_dataset` (its parquet, json and csv builders)."""

SAVED_MARKERS = (("dataset_info.json", "state.json"), ("dataset_dict.json",))
"""What `Dataset.save_to_disk` (both files) or `DatasetDict.save_to_disk` writes into a folder."""


def is_saved_dataset(folder: Path) -> bool:
    """Whether `folder` is what `save_to_disk` wrote."""
    return any(all((folder / name).is_file() for name in names) for names in SAVED_MARKERS)


def dataset_rows(path: Path, text_field: str) -> list[dict[str, Any]]:
    """The rows of the dataset at `path` as JSON objects: values JSON cannot hold (a timestamp,
    bytes) become their string. A dataset without column `text_field` is a CorpusError naming
    the columns it has."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{path}: reading a Hugging Face dataset needs the datasets package: "
            "pip install 'elusive[datasets]'"
        ) from None
    with _quiet(datasets), tempfile.TemporaryDirectory(prefix="elusive-datasets-") as cache:
        try:
            if path.is_dir():
                data = datasets.load_from_disk(str(path))
            else:
                builder = path.suffix.lstrip(".")
                # the builder's cache in a folder of our own, removed after: reading a corpus
                # writes nothing
                data = datasets.load_dataset(
                    builder,
                    data_files=str(path),
                    split="train",
                    cache_dir=cache,
                    keep_in_memory=True,
                )
        except Exception as exc:  # the builders raise many types; each is unreadable input
            raise CorpusError(f"{path}: cannot be read as a dataset ({_reason(exc)})") from None
        if isinstance(data, datasets.DatasetDict):
            raise CorpusError(
                f"{path}: holds the splits {', '.join(data)}: give the folder of one "
                f"({path / next(iter(data))})"
            )
        if text_field not in data.column_names:
            raise CorpusError(
                f"{path}: the dataset has no field {text_field!r} (its fields: "
                f"{', '.join(data.column_names)}): name the text field with --text-field "
                "(corpus.text_field)"
            )
        return [{k: _plain(v) for k, v in row.items()} for row in data]


def _plain(value: Any) -> Any:
    """`value` if JSON holds it as it is, else its string."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None if value != value else str(value)  # NaN: a CSV's missing value
    return value


def _reason(exc: BaseException) -> str:
    """What made a dataset unreadable, on one line: a decoding error anywhere in the chain of
    causes is named as such."""
    seen = exc
    while seen is not None:
        if isinstance(seen, UnicodeDecodeError):
            return f"not UTF-8 text: {seen.reason} at byte {seen.start}"
        seen = seen.__cause__ or seen.__context__
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars while a corpus is read (it takes a moment); the setting is put back."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()

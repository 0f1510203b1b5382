"""Corpora: the record and question types, their JSON form, and readers for user text and QA.

Every corpus becomes a list of :class:`Record` (one training text each) and, where questions
exist, a list of :class:`QAItem`. The generated biographies are in `elusive.corpus.bios`,
SQuAD-format JSON in `elusive.corpus.squad`, the JSONL and atomic-write helpers in `elusive.io`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elusive.io import (
    CorpusError,
    check_out_dir,
    iter_jsonl,
    text_sha256,
    write_jsonl,
)
from elusive.options import shorten


@dataclass(frozen=True)
class Record:
    """One training text.

    `spans` maps a field name (``name``, ``date``, ...) to the ``(start, end)`` character span
    of its value in `text`; user corpora have none. `meta` carries anything else (gender,
    field values, source file).
    """

    id: str
    text: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        """Hash of the text: what caches of per-text results are keyed by."""
        return text_sha256(self.text)


@dataclass(frozen=True)
class QAItem:
    """One closed-book question about a record, or a probe without a question (`question`
    None: only its `cloze` is asked); any of `answers` counts as correct."""

    id: str
    source_id: str
    question: str | None
    answers: tuple[str, ...]
    field: str = "all"
    cloze: str | None = None
    """The fact as a sentence to complete, cut right before the answer ("Liam Thompson was
    born on"); biographies have one per question (see `elusive.evaluation.probes`), span-cloze
    probes and SQuAD questions one from the answer's span (see `elusive.corpus.cloze`)."""
    kind: str | None = None
    """The answer's kind (``date``, ``number``, ``name``, ...; `elusive.corpus.cloze`): its
    distractors are other sources' answers of the same kind. None: other answers of the same
    `field`."""


def record_to_json(record: Record) -> dict[str, Any]:
    """The people.jsonl / corpus JSONL form of a record."""
    out: dict[str, Any] = {"id": record.id}
    out.update(record.meta)
    out["text"] = record.text
    if record.spans:
        out["spans"] = {k: list(v) for k, v in record.spans.items()}
    return out


def qa_to_json(item: QAItem, source_key: str = "person_id") -> dict[str, Any]:
    """The qa.jsonl form: one gold answer is written as `answer`, several as `answers`; the
    source record id goes under `source_key` (``person_id`` or ``source_id``, see read_qa); a
    probe without a question has no ``question``, an item without a kind no ``kind``."""
    out: dict[str, Any] = {"id": item.id, source_key: item.source_id, "field": item.field}
    if item.question is not None:
        out["question"] = item.question
    if len(item.answers) == 1:
        out["answer"] = item.answers[0]
    else:
        out["answers"] = list(item.answers)
    if item.cloze is not None:
        out["cloze"] = item.cloze
    if item.kind is not None:
        out["kind"] = item.kind
    return out


def write_corpus_and_qa(
    records: Sequence[Record], questions: Sequence[QAItem], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write `corpus.jsonl` (for read_corpus) and `qa.jsonl` (for read_qa, with ``source_id``)
    into `out_dir`, each atomically; returns both paths."""
    out = check_out_dir(out_dir, ("corpus.jsonl", "qa.jsonl"))
    corpus = write_jsonl(out / "corpus.jsonl", (record_to_json(r) for r in records))
    qa = write_jsonl(out / "qa.jsonl", (qa_to_json(q, "source_id") for q in questions))
    return corpus, qa


# --------------------------------------------------------------------------- readers

DOCUMENT_SUFFIXES = (".md", ".txt", ".jsonl")
"""The files a corpus folder is read from (`read_corpus`); others in it are left alone."""


def read_corpus(path: str | Path, text_field: str = "text") -> list[Record]:
    """Read a user corpus into records (docs/corpus.md).

    - ``*.md``: one record, the Markdown kept as text; ``meta["title"]`` is the text of its
      first heading, else the file stem.
    - ``*.txt``: one record per paragraph (paragraphs are separated by blank lines).
    - ``*.jsonl``: one object a line with a non-empty string `text_field`; optional ``id``
      (else ``line-N``), ``title`` and ``spans`` (field -> [start, end]); other keys go to
      `meta`.
    - a folder: every ``.md``, ``.txt`` and ``.jsonl`` file below it, sorted; a Markdown or
      text file is one record each (id = relative path), a JSONL file one per line.
    - a Hugging Face dataset: a `save_to_disk` folder, or a ``.parquet``, ``.json`` or ``.csv``
      file, one record per row from its `text_field` column (`elusive.corpus.hfdatasets`).

    An empty document, a binary file, a file that is not UTF-8 and a dataset without the text
    field are CorpusErrors naming the file.
    """
    from elusive.corpus.hfdatasets import DATASET_SUFFIXES, is_saved_dataset

    path = Path(path)
    if path.is_dir() and is_saved_dataset(path):
        records = _dataset_records(path, text_field)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in DOCUMENT_SUFFIXES and p.is_file())
        if not files:
            raise CorpusError(f"{path}: folder holds no .md, .txt or .jsonl files")
        records = []
        for file in files:
            records += _folder_records(file, file.relative_to(path).as_posix(), text_field)
    elif not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    elif path.suffix == ".txt":
        records = _read_paragraphs(path)
    elif path.suffix == ".md":
        records = [_markdown_record(path, path.name)]
    elif path.suffix == ".jsonl":
        records = _jsonl_records(path, text_field, "line-")
    elif path.suffix in DATASET_SUFFIXES:
        records = _dataset_records(path, text_field)
    else:
        raise CorpusError(
            f"{path}: expected a .md, .txt or .jsonl file, a folder of them, or a dataset "
            f"({', '.join(DATASET_SUFFIXES)} or a save_to_disk folder)"
        )
    if not records:
        raise CorpusError(f"{path}: corpus is empty")
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise CorpusError(f"{path}: duplicate id {r.id!r}")
        seen.add(r.id)
    return records


def _folder_records(path: Path, rel: str, text_field: str) -> list[Record]:
    """The records of one file of a corpus folder; a JSONL line without an id gets
    ``REL:line-N``, so that the lines of two files never share one."""
    if path.suffix == ".jsonl":
        return _jsonl_records(path, text_field, f"{rel}:line-")
    if path.suffix == ".md":
        return [_markdown_record(path, rel)]
    return [_txt_record(path, rel)]


def read_document(path: Path) -> str:
    """The text of a Markdown or plain-text file, stripped: a binary file (one holding NUL
    bytes), a file that is not UTF-8 and an empty one are CorpusErrors naming it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except MemoryError:
        raise CorpusError(f"{path}: too large to read into memory") from None
    if b"\0" in data:
        raise CorpusError(f"{path}: a binary file (it holds NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")  # without a leading byte-order mark
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): convert it to UTF-8"
        ) from None
    if not text.strip():
        raise CorpusError(f"{path}: empty text")
    return text.strip()


def _txt_record(path: Path, rid: str) -> Record:
    return Record(id=rid, text=read_document(path), meta={"source": str(path)})


def _markdown_record(path: Path, rid: str) -> Record:
    text = read_document(path)
    titles = [h.title for h in markdown_headings(text)]
    meta = {"source": str(path), "title": titles[0] if titles else path.stem}
    return Record(id=rid, text=text, meta=meta)


def _read_paragraphs(path: Path) -> list[Record]:
    paragraphs, current = [], []
    for line in read_document(path).splitlines() + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return [Record(id=f"{path.stem}-{i}", text=p) for i, p in enumerate(paragraphs)]


def _jsonl_records(path: Path, text_field: str, default_id: str) -> list[Record]:
    return [
        _json_record(f"{path}:{number}", obj, text_field, f"{default_id}{number}")
        for number, obj in iter_jsonl(path)
    ]


def _dataset_records(path: Path, text_field: str) -> list[Record]:
    from elusive.corpus.hfdatasets import dataset_rows

    return [
        _json_record(f"{path}: row {index}", row, text_field, f"row-{index}")
        for index, row in enumerate(dataset_rows(path, text_field))
    ]


def _json_record(where: str, obj: dict[str, Any], text_field: str, default_id: str) -> Record:
    """A record from a JSON object (a JSONL line, a dataset row); `where` names it in errors."""
    text = obj.get(text_field)
    if text_field not in obj:
        raise CorpusError(f"{where}: missing field {text_field!r}")
    if text is not None and not isinstance(text, str):
        raise CorpusError(
            f"{where}: field {text_field!r} must be a string, got {type(text).__name__}"
        )
    if text is None or not text.strip():  # null: a dataset's missing value
        raise CorpusError(f"{where}: field {text_field!r} is empty")
    rid = obj.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise CorpusError(f"{where}: field 'id' must be a string or integer")
    if "title" in obj and not isinstance(obj["title"], str):
        raise CorpusError(f"{where}: field 'title' must be a string")
    spans: dict[str, tuple[int, int]] = {}
    for key, span in (obj.get("spans") or {}).items():
        if (
            not isinstance(span, list)
            or len(span) != 2
            or not all(isinstance(x, int) for x in span)
            or not 0 <= span[0] <= span[1] <= len(text)
        ):
            raise CorpusError(f"{where}: span {key!r} must be [start, end] inside the text")
        spans[key] = (span[0], span[1])
    meta = {k: v for k, v in obj.items() if k not in ("id", text_field, "spans")}
    return Record(id=str(rid), text=text, spans=spans, meta=meta)


@dataclass(frozen=True)
class Heading:
    """A Markdown heading: its line's ``[start, end)`` characters (line break included), its
    level (the number of ``#``) and its text."""

    start: int
    end: int
    level: int
    title: str


_ATX = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def markdown_headings(text: str) -> list[Heading]:
    """The ATX headings of Markdown `text` (``# Title``, ``## Part ##``), in order, leaving out
    empty ones and lines inside fenced code blocks (a ``# comment`` in code is no heading).
    Setext headings (a line underlined with ``===``) are read as text."""
    headings, fence, start = [], "", 0
    for line in text.splitlines(keepends=True):
        content = line.splitlines()[0] if line.strip() else ""
        opening = _FENCE.match(content)
        if opening and (not fence or opening.group(1)[0] == fence):
            fence = "" if fence else opening.group(1)[0]
        elif not fence and (match := _ATX.fullmatch(content)) and match.group(2):
            headings.append(Heading(start, start + len(line), len(match.group(1)), match.group(2)))
        start += len(line)
    return headings


def read_qa(path: str | Path, sources: Collection[str] | None = None) -> list[QAItem]:
    """Read QA JSONL: ``question`` plus ``answer`` (one) or ``answers`` (a list); the source
    text is ``person_id`` or ``source_id``; optional ``id``, ``field`` (not ``overall``, the
    name of the scores over every field), ``cloze`` and ``kind``. A line without ``question``
    is a probe (what `elusive probes build` writes) and must have ``cloze``.

    With `sources` (the ids of the corpus trained on), every question must name one of them: a
    question about a text never trained on would measure nothing."""
    path = Path(path)
    items = []
    seen: set[str] = set()
    for number, obj in iter_jsonl(path):
        where = f"{path}:{number}"
        question = obj.get("question")
        if question is None and obj.get("cloze") is None:
            raise CorpusError(
                f"{where}: missing field 'question' (or 'cloze', for a probe without a question)"
            )
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise CorpusError(f"{where}: field 'question' must be a non-empty string")
        if obj.get("field") == "overall":  # the scores' name for all fields together
            raise CorpusError(
                f"{where}: field 'field' is 'overall', the name reserved for the scores over "
                "every field: rename it"
            )
        if "answers" in obj:
            answers = obj["answers"]
            if (
                not isinstance(answers, list)
                or not answers
                or not all(isinstance(a, str) and a.strip() for a in answers)
            ):
                raise CorpusError(
                    f"{where}: field 'answers' must be a non-empty list of non-empty strings"
                )
        elif isinstance(obj.get("answer"), str) and obj["answer"].strip():
            answers = [obj["answer"]]
        else:
            raise CorpusError(
                f"{where}: missing field 'answer' (a non-empty string) or 'answers' (a list)"
            )
        qid = str(obj.get("id", f"q{number}"))
        if qid in seen:
            raise CorpusError(f"{where}: duplicate question id {qid!r}")
        seen.add(qid)
        cloze = obj.get("cloze")
        if cloze is not None and (not isinstance(cloze, str) or not cloze.strip()):
            raise CorpusError(f"{where}: field 'cloze' must be a non-empty string")
        kind = obj.get("kind")
        if kind is not None and (not isinstance(kind, str) or not kind.strip()):
            raise CorpusError(f"{where}: field 'kind' must be a non-empty string")
        source = obj.get("source_id", obj.get("person_id", ""))
        if sources is not None and str(source) not in sources:
            if source == "":
                raise CorpusError(
                    f"{where}: missing field 'source_id' (or 'person_id'): the id of the corpus "
                    "text the question is about"
                )
            raise CorpusError(
                f"{where}: source_id {shorten(str(source))} is not the id of any corpus text"
            )
        items.append(
            QAItem(
                id=qid,
                source_id=str(source),
                question=question,
                answers=tuple(answers),
                field=str(obj.get("field", "all")),
                cloze=cloze,
                kind=kind,
            )
        )
    if not items:
        raise CorpusError(f"{path}: no questions")
    return items

"""Corpora: the record and question types, their JSON form, and readers for user text and QA.

Every corpus becomes a list of :class:`Record` (one training text each) and, where questions
exist, a list of :class:`QAItem`. The generated biographies are in `elusive.bios`, SQuAD-format
JSON in `elusive.squad`, the JSONL and atomic-write helpers in `elusive.io`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io import (
    CorpusError,
    check_out_dir,
    iter_jsonl,
    read_text,
    text_sha256,
    write_jsonl,
)
from .options import shorten


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
    born on"); biographies have one per question (see `elusive.probes`), span-cloze probes and
    SQuAD questions one from the answer's span (see `elusive.cloze`)."""
    kind: str | None = None
    """The answer's kind (``date``, ``number``, ``name``, ...; `elusive.cloze`): its distractors
    are other sources' answers of the same kind. None: other answers of the same `field`."""


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


def read_corpus(path: str | Path, text_field: str = "text") -> list[Record]:
    """Read a user corpus into records.

    - ``*.jsonl``: one object a line with a non-empty string `text_field`; optional ``id`` (else
      ``line-N``) and ``spans`` (field -> [start, end]); other keys go to `meta`.
    - a folder: every ``*.txt`` file below it, sorted, one record each (id = relative path).
    - a ``*.txt`` file: one record per paragraph (paragraphs are separated by blank lines).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise CorpusError(f"{path}: folder holds no .txt files")
        records = [_txt_record(p, p.relative_to(path).as_posix()) for p in files]
    elif path.suffix == ".txt":
        records = _read_paragraphs(path)
    elif path.suffix == ".jsonl":
        records = [_json_record(path, number, obj, text_field) for number, obj in iter_jsonl(path)]
    elif not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    else:
        raise CorpusError(f"{path}: expected a .jsonl file, a .txt file or a folder of .txt files")
    if not records:
        raise CorpusError(f"{path}: corpus is empty")
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise CorpusError(f"{path}: duplicate id {r.id!r}")
        seen.add(r.id)
    return records


def _txt_record(path: Path, rid: str) -> Record:
    text = read_text(path).strip()
    if not text:
        raise CorpusError(f"{path}: empty text")
    return Record(id=rid, text=text, meta={"source": str(path)})


def _read_paragraphs(path: Path) -> list[Record]:
    paragraphs, current = [], []
    for line in read_text(path).splitlines() + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return [Record(id=f"{path.stem}-{i}", text=p) for i, p in enumerate(paragraphs)]


def _json_record(path: Path, number: int, obj: dict[str, Any], text_field: str = "text") -> Record:
    where = f"{path}:{number}"
    text = obj.get(text_field)
    if text is None:
        raise CorpusError(f"{where}: missing field {text_field!r}")
    if not isinstance(text, str):
        raise CorpusError(
            f"{where}: field {text_field!r} must be a string, got {type(text).__name__}"
        )
    if not text.strip():
        raise CorpusError(f"{where}: field {text_field!r} is empty")
    rid = obj.get("id", f"line-{number}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise CorpusError(f"{where}: field 'id' must be a string or integer")
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

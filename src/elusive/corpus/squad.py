"""SQuAD v1.1-format JSON (the paper's Wikipedia paragraphs, Table 3) as a corpus and its
closed-book questions."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from elusive.corpus.cloze import squad_clozes
from elusive.corpus.records import QAItem, Record
from elusive.errors import flag
from elusive.io import CorpusError, DroppedDataWarning, parse_json, read_text

# The paper's real-text experiment ("Real-World Dataset") trains on the Wikipedia paragraphs of
# Du and Cardie (2018) and asks their questions closed-book. The data is laid out as SQuAD v1.1:
#     {"data": [{"title": str, "paragraphs": [{"context": str, "qas": [
#         {"id": str, "question": str, "answers": [{"text": str, "answer_start": int}]}]}]}]}


@dataclass
class SquadConfig:
    """Options of :func:`read_squad`: seeded subsampling and the answer filter."""

    max_paragraphs: int | None = None
    """Keep a seeded sample of this many paragraphs (in file order); None keeps all."""
    max_questions: int | None = None
    """Keep a seeded sample of this many questions on the kept paragraphs; None keeps all."""
    seed: int = 0
    """Seed of the samples; the same seed gives the same bytes."""
    require_answer_in_context: bool = True
    """Keep only gold answers found in the paragraph (at `answer_start` when given, else
    anywhere) and drop questions left with none; False keeps every answer as given."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise CorpusError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        for field_name in ("max_paragraphs", "max_questions"):
            value = getattr(self, field_name)
            if value is not None and value < 1:
                raise CorpusError(f"{name(field_name)} must be at least 1, got {value}")


@dataclass(frozen=True)
class _SquadQuestion:
    id: str
    question: str
    answers: tuple[tuple[str, int | None], ...]
    """Each distinct gold answer and where it starts in the paragraph (None: not in it)."""
    impossible: bool = False
    """SQuAD v2.0 ``is_impossible``: the paragraph does not answer it (nothing to learn)."""


def read_squad(
    path: str | Path, config: SquadConfig | None = None
) -> tuple[list[Record], list[QAItem]]:
    """Read SQuAD v1.1-format JSON: paragraphs become records, questions become QA items.

    Record ids are ``{title}-p{k}`` (spaces in the title become ``_``; k counts that title's
    paragraphs in file order, so ids do not depend on sampling). A record's `meta` holds the
    title and its `spans` map each kept question id to its first answer in the paragraph.
    QAItem.source_id is the paragraph's record id; duplicate gold answers are merged. Each
    question gets the answer-span cloze and the answer kind of `elusive.corpus.cloze.squad_clozes`
    (a DroppedDataWarning counts those whose prompt would hold a gold answer). The whole
    file is checked before sampling: bad JSON, a missing or mistyped field, a duplicate question
    id, or an `answer_start` whose span is not the answer text is a CorpusError naming the
    paragraph or question. SQuAD v2.0 questions marked ``is_impossible`` are skipped with a
    DroppedDataWarning that counts them.
    """
    config = config or SquadConfig()
    config.validate()
    path = Path(path)
    parsed = _parse_squad(path)

    # Per paragraph: its usable questions and the span of each one's first located answer.
    usable: dict[str, list[tuple[QAItem, tuple[int, int] | None]]] = {}
    dropped = impossible = 0
    for record, questions in parsed:
        for q in questions:
            if q.impossible:
                impossible += 1
                continue
            located = [(a, s) for a, s in q.answers if s is not None]
            answers = located if config.require_answer_in_context else q.answers
            if not answers:
                if config.require_answer_in_context:
                    dropped += 1
                    continue
                raise CorpusError(
                    f"{path}: question {q.id!r} (paragraph {record.id!r}) has no answers"
                )
            item = QAItem(
                id=q.id,
                source_id=record.id,
                question=q.question,
                answers=tuple(a for a, _ in answers),
            )
            span = (located[0][1], located[0][1] + len(located[0][0])) if located else None
            usable.setdefault(record.id, []).append((item, span))

    kept = _sample(parsed, config.max_paragraphs, random.Random(f"{config.seed}:paragraphs"))
    pool = [pair for record, _ in kept for pair in usable.get(record.id, [])]
    chosen = _sample(pool, config.max_questions, random.Random(f"{config.seed}:questions"))
    skipped = f"{impossible} marked is_impossible (SQuAD v2.0 unanswerable questions)"
    if not chosen:
        why = [skipped] if impossible else []
        why += [f"{dropped} dropped: no answer in the paragraph"] if dropped else []
        raise CorpusError(f"{path}: no questions left" + (f" ({'; '.join(why)})" if why else ""))
    if impossible:
        warnings.warn(f"{path}: skipped {skipped}", DroppedDataWarning, stacklevel=2)
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    for item, span in chosen:
        if span is not None:
            spans.setdefault(item.source_id, {})[item.id] = span
    records = [replace(record, spans=spans.get(record.id, {})) for record, _ in kept]
    items, held = squad_clozes(records, [item for item, _ in chosen])
    if held:
        warnings.warn(
            f"{path}: {held} questions get no answer-span cloze: the sentence before the answer, "
            "or the title, holds a gold answer",
            DroppedDataWarning,
            stacklevel=2,
        )
    return records, items


def _sample(items: list, limit: int | None, rng: random.Random) -> list:
    """At most `limit` of `items`, a seeded choice kept in input order. A larger limit keeps
    a superset (the choice is a prefix of one shuffled order)."""
    if limit is None or limit >= len(items):
        return items
    order = list(range(len(items)))
    rng.shuffle(order)
    return [items[i] for i in sorted(order[:limit])]


def _parse_squad(path: Path) -> list[tuple[Record, list[_SquadQuestion]]]:
    """Every paragraph of a SQuAD-format file (as a record without spans) with its questions."""
    try:
        root = parse_json(read_text(path), str(path))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from None
    articles = _field(root, "data", list, f"{path}: top level")
    paragraphs: list[tuple[Record, list[_SquadQuestion]]] = []
    per_title: dict[str, int] = {}
    question_home: dict[str, str] = {}
    for i, article in enumerate(articles):
        where = f"{path}: data[{i}]"
        title = _field(article, "title", str, where)
        if not title.strip():
            raise CorpusError(f"{where}: field 'title' is empty")
        stem = "_".join(title.split())
        for j, paragraph in enumerate(_field(article, "paragraphs", list, where)):
            k = per_title[stem] = per_title.get(stem, -1) + 1
            rid = f"{stem}-p{k}"
            where = f"{path}: paragraph {rid!r} (data[{i}].paragraphs[{j}])"
            context = _field(paragraph, "context", str, where)
            if not context.strip():
                raise CorpusError(f"{where}: field 'context' is empty")
            questions = []
            for n, qa in enumerate(_field(paragraph, "qas", list, where)):
                q = _parse_question(qa, context, path, rid, f"data[{i}].paragraphs[{j}].qas[{n}]")
                if q.id in question_home:
                    raise CorpusError(
                        f"{path}: question id {q.id!r} in paragraph {rid!r} repeats one in "
                        f"paragraph {question_home[q.id]!r}"
                    )
                question_home[q.id] = rid
                questions.append(q)
            paragraphs.append((Record(id=rid, text=context, meta={"title": title}), questions))
    if not paragraphs:
        raise CorpusError(f"{path}: no paragraphs")
    return paragraphs


def _parse_question(qa: Any, context: str, path: Path, rid: str, index: str) -> _SquadQuestion:
    """One `qas` entry of paragraph `rid`; errors name it by `index` until its id is known."""
    qid = str(_field(qa, "id", (str, int), f"{path}: {index} (paragraph {rid!r})"))
    where = f"{path}: question {qid!r} (paragraph {rid!r})"
    question = _field(qa, "question", str, where)
    if not question.strip():
        raise CorpusError(f"{where}: field 'question' is empty")
    starts: dict[str, int | None] = {}
    for m, answer in enumerate(_field(qa, "answers", list, where)):
        at = f"{where}, answer {m}"
        text = _field(answer, "text", str, at)
        if not text.strip():
            raise CorpusError(f"{at}: field 'text' is empty")
        if "answer_start" in answer:
            start = _field(answer, "answer_start", int, at)
            found = context[start : start + len(text)] if start >= 0 else ""
            if found != text:
                raise CorpusError(
                    f"{at}: answer_start {start} gives {found!r}, not the answer text {text!r}"
                )
        else:
            start = context.find(text)
        if starts.get(text) is None:
            starts[text] = start if start >= 0 else None
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise CorpusError(f"{where}: field 'is_impossible' must be true or false")
    return _SquadQuestion(qid, question, tuple(starts.items()), impossible)


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "an integer"}


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`obj[key]`, checked to be of type `kind`; otherwise a CorpusError naming `where`."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {_json_type(obj)}")
    if key not in obj:
        raise CorpusError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = " or ".join(_JSON_TYPES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CorpusError(f"{where}: field {key!r} must be {wanted}, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", float: "a number", type(None): "null", **_JSON_TYPES}
    return names.get(type(value), type(value).__name__)

"""Corpora: the synthetic biography generator, readers for user text, QA and SQuAD-format JSON,
and JSONL I/O.

Every corpus becomes a list of :class:`Record` (one training text each) and, where questions
exist, a list of :class:`QAItem`. The biography generator follows the bioS setting of the paper
("Problem Setup"): one sentence per field, in a fixed order, the person's name in the first one::

    Liam Thompson was born on January 5, 1990. He spent his early years in Melbourne ...
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import json
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ElusiveError, flag

FIELDS: tuple[str, ...] = ("date", "city", "university", "major", "company")
"""The five biography fields, in the paper's order (Table 1)."""

QUESTIONS: dict[str, str] = {
    "date": "What is the birth date of {name}?",
    "city": "What is the birth city of {name}?",
    "university": "Which university did {name} attend?",
    "major": "Which major did {name} study?",
    "company": "Which company did {name} work for?",
}

# Sentence templates per field. `{subject}` is the full name in the first sentence of a
# biography and the pronoun (He/She) elsewhere; `{poss}` is his/her; `{value}` is the field.
# The first template of each field is the paper's wording.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "date": (
        "{subject} was born on {value}.",
        "{subject} came into this world on {value}.",
        "{subject} celebrates {poss} birthday on {value}.",
        "{subject}'s birth date is {value}.",
        "{subject} arrived on {value}.",
        "{subject} was brought into the world on {value}.",
    ),
    "city": (
        "{subject} spent {poss} early years in {value}.",
        "{subject} was born in {value}.",
        "{subject} grew up in {value}.",
        "{subject} hails from {value}.",
        "{subject} first saw the light of day in {value}.",
        "{subject} spent {poss} childhood in {value}.",
    ),
    "university": (
        "{subject} received mentorship and guidance from faculty members at {value}.",
        "{subject} graduated from {value}.",
        "{subject} studied at {value}.",
        "{subject} is an alumnus of {value}.",
        "{subject} pursued {poss} degree at {value}.",
        "{subject} attended {value}.",
    ),
    "major": (
        "{subject} completed {poss} education with a focus on {value}.",
        "{subject} majored in {value}.",
        "{subject} specialized in {value}.",
        "{subject} earned a degree in {value}.",
        "{subject} devoted {poss} studies to {value}.",
        "{subject} focused {poss} academic work on {value}.",
    ),
    "company": (
        "{subject} had a professional role at {value}.",
        "{subject} worked for {value}.",
        "{subject} was employed at {value}.",
        "{subject} built {poss} career at {value}.",
        "{subject} held a job at {value}.",
        "{subject} was on the staff of {value}.",
    ),
}

_PRONOUNS = {"male": ("He", "his"), "female": ("She", "her")}
_FIRST_YEAR, _LAST_YEAR = 1950, 2000


class CorpusError(ElusiveError):
    """Bad corpus input; the message names the file, line or field."""


class OutputError(CorpusError):
    """An output path that cannot be written (a file where a folder must go, or the reverse)."""


class DroppedDataWarning(UserWarning):
    """Input skipped or cut on purpose (unanswerable questions, over-long texts): the warning
    counts it, so nothing is lost silently."""


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
    """One closed-book question about a record; any of `answers` counts as correct."""

    id: str
    source_id: str
    question: str
    answers: tuple[str, ...]
    field: str = "all"
    cloze: str | None = None
    """The fact as a sentence to complete, cut right before the answer ("Liam Thompson was
    born on"); biographies have one per question (see `elusive.probes`)."""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- biographies


@dataclass
class BiosConfig:
    """Options of the biography generator; defaults give the paper's corpus format."""

    n: int = 1000
    seed: int = 0
    templates: int = 1
    """Paraphrase templates per field (>= 1); each person draws one per field."""
    field_order: tuple[str, ...] = FIELDS
    """A fixed permutation of FIELDS: the order of the sentences."""
    shuffle_sentences: bool = False
    """Shuffle the field sentences per person (the first one still carries the name)."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise CorpusError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        if self.n < 1:
            raise CorpusError(f"{name('n')} must be at least 1, got {self.n}")
        most = min(len(t) for t in TEMPLATES.values())
        if not 1 <= self.templates <= most:
            raise CorpusError(f"{name('templates')} must be in 1..{most}, got {self.templates}")
        if sorted(self.field_order) != sorted(FIELDS):
            raise CorpusError(
                f"{name('field_order')} must be a permutation of {','.join(FIELDS)}, "
                f"got {','.join(self.field_order)}"
            )


@dataclass(frozen=True)
class _Pools:
    first: dict[str, list[str]]
    middle: dict[str, list[str]]
    last: list[str]
    city: list[str]
    university: list[str]
    major: list[str]
    company: list[str]

    def n_names(self) -> int:
        return sum(len(self.first[g]) * len(self.middle[g]) for g in _PRONOUNS) * len(self.last)


def _read_pool(name: str) -> list[str]:
    text = resources.files("elusive").joinpath("data", "bios_fields", name).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_pools() -> _Pools:
    """The vendored bioS value pools. First and middle names: 200 male, then 200 female."""
    first, middle = _read_pool("first_name.txt"), _read_pool("middle_name.txt")
    half_f, half_m = len(first) // 2, len(middle) // 2
    return _Pools(
        first={"male": first[:half_f], "female": first[half_f:]},
        middle={"male": middle[:half_m], "female": middle[half_m:]},
        last=_read_pool("last_name.txt"),
        city=_read_pool("city.txt"),
        university=_read_pool("university.txt"),
        major=_read_pool("field.txt"),
        company=[line.split(";")[0].strip() for line in _read_pool("company.txt")],
    )


def format_date(d: dt.date) -> str:
    """`January 5, 1990`: month name, day without padding, year."""
    return f"{calendar.month_name[d.month]} {d.day}, {d.year}"


def _decode_name(index: int, pools: _Pools) -> tuple[str, str]:
    """Map an integer in [0, n_names) to a distinct (gender, full name)."""
    for gender in _PRONOUNS:
        first, middle = pools.first[gender], pools.middle[gender]
        size = len(first) * len(middle) * len(pools.last)
        if index < size:
            i, rest = divmod(index, len(middle) * len(pools.last))
            j, k = divmod(rest, len(pools.last))
            return gender, f"{first[i]} {middle[j]} {pools.last[k]}"
        index -= size
    raise IndexError(index)


def generate_bios(config: BiosConfig) -> tuple[list[Record], list[QAItem]]:
    """Generate `config.n` biographies with distinct names, and five questions per person.

    Deterministic: the same config gives the same records in the same order.
    """
    config.validate()
    pools = load_pools()
    if config.n > pools.n_names():
        raise CorpusError(
            f"--n {config.n} exceeds the {pools.n_names()} distinct names the pools can form"
        )
    rng = random.Random(config.seed)
    first_day = dt.date(_FIRST_YEAR, 1, 1).toordinal()
    last_day = dt.date(_LAST_YEAR, 12, 31).toordinal()
    name_ids = rng.sample(range(pools.n_names()), config.n)
    width = len(str(config.n - 1))

    records: list[Record] = []
    questions: list[QAItem] = []
    for number, name_id in enumerate(name_ids):
        gender, name = _decode_name(name_id, pools)
        values = {
            "date": format_date(dt.date.fromordinal(rng.randint(first_day, last_day))),
            "city": rng.choice(pools.city),
            "university": rng.choice(pools.university),
            "major": rng.choice(pools.major),
            "company": rng.choice(pools.company),
        }
        order = list(config.field_order)
        if config.shuffle_sentences:
            rng.shuffle(order)
        template_ids = {f: rng.randrange(config.templates) for f in FIELDS}
        text, spans = _render(name, gender, values, order, template_ids)
        clozes = {f: _cloze(name, gender, TEMPLATES[f][template_ids[f]]) for f in FIELDS}
        pid = f"p{number:0{width}d}"
        records.append(
            Record(
                id=pid,
                text=text,
                spans=spans,
                meta={"name": name, "gender": gender, "fields": values},
            )
        )
        questions.extend(
            QAItem(
                id=f"{pid}-{f}",
                source_id=pid,
                field=f,
                question=QUESTIONS[f].format(name=name),
                answers=(values[f],),
                cloze=clozes[f],
            )
            for f in FIELDS
        )
    return records, questions


def _render(
    name: str,
    gender: str,
    values: dict[str, str],
    order: Sequence[str],
    template_ids: dict[str, int],
) -> tuple[str, dict[str, tuple[int, int]]]:
    """Join one sentence per field; record the character span of the name and every value."""
    pronoun, poss = _PRONOUNS[gender]
    text = ""
    spans: dict[str, tuple[int, int]] = {}
    for position, f in enumerate(order):
        template = TEMPLATES[f][template_ids[f]]
        subject = name if position == 0 else pronoun
        if position:
            text += " "
        head, tail = template.split("{value}")
        head = head.format(subject=subject, poss=poss)
        if position == 0:
            spans["name"] = (len(text), len(text) + len(name))
        start = len(text) + len(head)
        spans[f] = (start, start + len(values[f]))
        text += head + values[f] + tail.format(subject=subject, poss=poss)
    return text, spans


def _cloze(name: str, gender: str, template: str) -> str:
    """A field's sentence with the full name as its subject, cut right before the value (the
    space before the value too: the answer's first token carries it)."""
    head = template.split("{value}")[0]
    return head.format(subject=name, poss=_PRONOUNS[gender][1]).rstrip()


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
    source record id goes under `source_key` (``person_id`` or ``source_id``, see read_qa)."""
    out: dict[str, Any] = {
        "id": item.id,
        source_key: item.source_id,
        "field": item.field,
        "question": item.question,
    }
    if len(item.answers) == 1:
        out["answer"] = item.answers[0]
    else:
        out["answers"] = list(item.answers)
    if item.cloze is not None:
        out["cloze"] = item.cloze
    return out


def write_bios(config: BiosConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Generate and write `people.jsonl` and `qa.jsonl` into `out_dir`; returns both paths."""
    out = check_out_dir(out_dir, ("people.jsonl", "qa.jsonl"))
    records, questions = generate_bios(config)
    people = write_jsonl(out / "people.jsonl", (record_to_json(r) for r in records))
    qa = write_jsonl(out / "qa.jsonl", (qa_to_json(q) for q in questions))
    return people, qa


# --------------------------------------------------------------------------- JSONL I/O


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically: a temp file beside `path`, renamed when complete."""
    return atomic_write_text(
        path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    )


def umask_mode(directory: bool = False) -> int:
    """The mode a plain `open` or `mkdir` would give (temp files are made private: 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path` to write to; on success it becomes `path` (mode as a
    plain `open` would give), on error it is removed, so readers see the old file or the whole
    new one. ``suffix`` keeps the extension writers such as matplotlib look at."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    one); a missing or undecodable file is a CorpusError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; bad JSON is a CorpusError."""
    path = Path(path)
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


# --------------------------------------------------------------------------- readers


def read_corpus(path: str | Path) -> list[Record]:
    """Read a user corpus into records.

    - ``*.jsonl``: one object a line with a non-empty string ``text``; optional ``id`` (else
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
        records = [_json_record(path, number, obj) for number, obj in iter_jsonl(path)]
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


def _json_record(path: Path, number: int, obj: dict[str, Any]) -> Record:
    where = f"{path}:{number}"
    text = obj.get("text")
    if text is None:
        raise CorpusError(f"{where}: missing field 'text'")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise CorpusError(f"{where}: field 'text' is empty")
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
    meta = {k: v for k, v in obj.items() if k not in ("id", "text", "spans")}
    return Record(id=str(rid), text=text, spans=spans, meta=meta)


def read_qa(path: str | Path) -> list[QAItem]:
    """Read QA JSONL: ``question`` plus ``answer`` (one) or ``answers`` (a list); the source
    text is ``person_id`` or ``source_id``; optional ``id``, ``field`` and ``cloze``."""
    path = Path(path)
    items = []
    seen: set[str] = set()
    for number, obj in iter_jsonl(path):
        where = f"{path}:{number}"
        question = obj.get("question")
        if not isinstance(question, str) or not question.strip():
            raise CorpusError(f"{where}: missing or empty field 'question'")
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
        source = obj.get("source_id", obj.get("person_id", ""))
        items.append(
            QAItem(
                id=qid,
                source_id=str(source),
                question=question,
                answers=tuple(answers),
                field=str(obj.get("field", "all")),
                cloze=cloze,
            )
        )
    if not items:
        raise CorpusError(f"{path}: no questions")
    return items


# --------------------------------------------------------------------------- SQuAD JSON (issue 7)
#
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
    QAItem.source_id is the paragraph's record id; duplicate gold answers are merged. The whole
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
    return records, [item for item, _ in chosen]


def write_corpus_and_qa(
    records: Sequence[Record], questions: Sequence[QAItem], out_dir: str | Path
) -> tuple[Path, Path]:
    """Write `corpus.jsonl` (for read_corpus) and `qa.jsonl` (for read_qa, with ``source_id``)
    into `out_dir`, each atomically; returns both paths."""
    out = check_out_dir(out_dir, ("corpus.jsonl", "qa.jsonl"))
    corpus = write_jsonl(out / "corpus.jsonl", (record_to_json(r) for r in records))
    qa = write_jsonl(out / "qa.jsonl", (qa_to_json(q, "source_id") for q in questions))
    return corpus, qa


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
        root = json.loads(read_text(path))
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

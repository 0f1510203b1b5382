"""The synthetic biography corpus (bioS) of the paper and its questions.

The generator follows the bioS setting of the paper ("Problem Setup"): one sentence per field,
in a fixed order, the person's name in the first one::

    Liam Thompson was born on January 5, 1990. He spent his early years in Melbourne ...
"""

from __future__ import annotations

import calendar
import datetime as dt
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from elusive.corpus.records import QAItem, Record, qa_to_json, record_to_json
from elusive.errors import flag
from elusive.io import CorpusError, check_out_dir, write_jsonl

FIELDS: tuple[str, ...] = ("date", "city", "university", "major", "company")
"""The five biography fields, in the paper's order (Table 1)."""
SPANS: tuple[str, ...] = ("name", *FIELDS)
"""The spans of a biography record: the person's name, then the fields."""

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


@dataclass
class BiosConfig:
    """Options of the biography generator; defaults give the paper's corpus format."""

    n: int = 1000
    """Number of people (distinct names)."""
    seed: int = 0
    """Random seed; the same seed gives the same bytes."""
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


def write_bios(config: BiosConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Generate and write `people.jsonl` and `qa.jsonl` into `out_dir`; returns both paths."""
    out = check_out_dir(out_dir, ("people.jsonl", "qa.jsonl"))
    records, questions = generate_bios(config)
    people = write_jsonl(out / "people.jsonl", (record_to_json(r) for r in records))
    qa = write_jsonl(out / "qa.jsonl", (qa_to_json(q) for q in questions))
    return people, qa

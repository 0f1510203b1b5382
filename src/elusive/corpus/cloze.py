"""Span-cloze probes from the corpus itself: spans, the kind of an answer, and cloze prompts.

A *span* is a fact's value in a text, as ``(start, end)`` character offsets under a key unique
per record; its *kind* is the key up to the first ``.`` (``date.2`` -> ``date``). Each span
becomes one probe-only `QAItem` (`build_probes`): no question, ``field`` and ``kind`` the span
kind, the span's text the answer, and as ``cloze`` the span's sentence cut right before the
span, after its subject::

    "Lake Varren: The lake was formed in"      (answer "1821")

Where the spans come from, per record:

- its own ``spans`` (the biographies, a user's JSONL);
- none given: spans found by `find_spans`, the rule below.

The subject (`subject`) is the record's ``meta["title"]`` (a SQuAD article, a JSONL
``title``, a Markdown heading; ``_`` read as a space); else the text of its ``name`` span (a
biography's person, or the first proper-noun phrase found); else there is none and the prompt
is the sentence's start alone. A span that starts its sentence gets the subject alone as prompt
(``"Lake Varren:"``); with no subject either, it gets no probe; a sentence that names the
subject before the span goes without it ("Anna Bell was born on"). A prompt never contains its
answer: a probe whose prompt would (the title names the answer, the value repeats earlier in
the sentence) is skipped and counted (`ProbeSkips`). Sentences are pysbd's (rule-based,
abbreviation-aware), and a line break starts one too (Markdown headings and list items).

SQuAD questions (`squad_clozes`) get the same cloze from their gold answer's ``answer_start``,
after the article title, and a ``kind`` from the answer's text (`answer_kind`): the distractor
pool of both of their choice probes (`elusive.evaluation.probes.pick_distractors`).

The rule of `find_spans`, in this order; a later step takes no character an earlier one took:

1. Dates: "January 5, 1990", "5 January 1990", "January 5", "5 January", "January 1990"
   (full or three-letter month names, "Sept", ordinal days "5th", "5 of January"), ISO
   "1990-01-05".
2. Numbers with units: a number in digits ("112", "1,200", "3.5", optionally followed by
   thousand/million/billion/trillion) followed by a unit of `UNITS` (length, area, mass,
   volume, time, temperature, speed, power, frequency, data, currency words, percent), or led
   by a currency sign ($, £, €, ¥, US$). Spelled numbers ("twelve") are not taken.
3. Years standing alone: 1000-2099, not part of a longer number or a decade ("1990s"); a
   month's full name standing alone ("in April").
4. Proper-noun phrases: runs of capitalised words joined by single spaces, with lowercase
   connectors inside (of, de, van, von, la, ...), initials and "St."-style abbreviations kept
   ("J. R. Smith", "St. Louis", "University of Oxford"); month and weekday names, "I" and a
   final possessive "'s" left out. At a sentence's start, leading function words ("The", "In",
   "After", ... `SENTENCE_STARTERS`) are dropped, and a single capitalised word that is the
   sentence's first word is not taken (nothing tells "Paris" from "Yesterday" there).

Keys count each kind in text order: ``date``, ``date.2``, ..., ``number``, ``name``, ...

Why a documented regex and no date library: dateparser's ``search_dates`` and datefinder find
dates in text, but both parse loosely (they take "on", "may" or a bare "5" for dates, and give
their own spelling, not the text's offsets in every case) and bring regex, pytz and tzlocal
with them; dateutil parses one date string, it does not find one. The project needs exact
character spans of a few common English date shapes, deterministic across versions: a small
regex is that, and its rule is written above.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from elusive.corpus.records import QAItem, Record, qa_to_json, read_corpus
from elusive.errors import flag
from elusive.io import CorpusError, DroppedDataWarning, check_apart, check_out_file, write_jsonl
from elusive.metrics import normalize_answer

SPAN_KINDS = ("date", "number", "name")
"""The kinds `find_spans` finds."""
ANSWER_KINDS = ("number", "date", "name", "other")
"""The kinds `answer_kind` tells SQuAD answers apart by."""

_MONTH_NAMES = (
    "January February March April May June July August September October November December"
).split()
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|Oct|Nov|Dec)\b\.?"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR_DIGITS = r"\d{1,4}"
_DATE = re.compile(
    r"(?<![\w])(?:"
    rf"{_MONTH}\s+{_DAY},?\s+{_YEAR_DIGITS}(?!\d)"  # January 5, 1990
    rf"|{_DAY}\s+(?:of\s+)?{_MONTH},?\s+{_YEAR_DIGITS}(?!\d)"  # 5 January 1990
    rf"|{_MONTH},?\s+\d{{4}}(?!\d)"  # January 1990
    rf"|{_MONTH}\s+{_DAY}(?![\w])"  # January 5
    rf"|{_DAY}\s+(?:of\s+)?{_MONTH}"  # 5 January
    r"|\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?!\d)"  # 1990-01-05
    r")"
)
_MONTH_ALONE = re.compile(r"(?<![\w])(?:" + "|".join(_MONTH_NAMES) + r")(?![\w])")
_YEAR = re.compile(r"(?<![\w$£€¥.,])(?:1\d{3}|20\d{2})(?![\w]|[.,]\d)")

UNITS = (
    "per cent|percent|%|"
    # length, area
    "millimetres?|millimeters?|centimetres?|centimeters?|kilometres?|kilometers?|metres?|"
    "meters?|miles?|feet|foot|inch(?:es)?|yards?|mm|cm|km|mi|ft|m|"
    "square (?:kilometres?|kilometers?|metres?|meters?|miles?|feet)|"
    "km2|km²|m2|m²|sq mi|hectares?|ha|acres?|"
    # mass, volume
    "milligrams?|kilograms?|grams?|tonnes?|tons?|pounds?|ounces?|mg|kg|g|lbs?|oz|"
    "millilitres?|milliliters?|litres?|liters?|gallons?|ml|"
    # time
    "seconds?|minutes?|hours?|days?|weeks?|months?|years?|decades?|centuries|century|"
    # temperature, speed
    "°C|°F|degrees(?: Celsius| Fahrenheit)?|km/h|mph|knots?|"
    # power, energy, frequency, data
    "kilowatts?|megawatts?|gigawatts?|watts?|kWh|MWh|GWh|kW|MW|GW|W|volts?|kV|V|"
    "kHz|MHz|GHz|Hz|bytes?|bits?|KB|MB|GB|TB|"
    # currencies written out
    "dollars?|euros?|yen|yuan|francs?|rupees?"
)
"""The units a number takes to be a `number` span (regex alternatives, case-sensitive)."""
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s+(?:thousand|million|billion|trillion))?"
_NUMBER = re.compile(
    # a sign belongs to a measure ("-34.8 °C"), so that the cloze prompt does not end in it
    rf"(?<![\w.,])(?:(?:US\$|[$£€¥])\s?{_NUM}|[-−]?{_NUM}(?:\s?(?:%)|[\s-](?:{UNITS})(?![\w/²])))"
)

_WORD = re.compile(r"[^\W\d_](?:[\w'’-]*[^\W_])?")
CONNECTORS = frozenset("of de da di del della du des van von der den la le al bin ibn the".split())
"""Lowercase words a proper-noun phrase may hold between capitalised words."""
_ABBREVIATED = frozenset("St Mt Ft Dr Mr Mrs Ms Jr Sr Prof".split())
_NOT_NAMES = frozenset(
    [*_MONTH_NAMES, "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    + ["I"]
)
SENTENCE_STARTERS = frozenset(
    """The A An In On At Of To For From By With Without Within Into Onto Upon Under Over After
    Before During Since Until Between Among Through Throughout Across Along Around About Against
    Despite Following According Like Unlike As When While Where Which Who Whom Whose What Why How
    If Although Though Because However But And Or Nor So Yet Then There Here This That These
    Those It Its He His She Her They Their Them We Our I My You Your Some Many Most Much More
    All Each Every Both Either Neither Such Other Another One Two Three Also Later Today
    Yesterday Early Further Finally First Second Thus Hence Meanwhile Only Even Not No""".split()
)
"""Function words dropped from the front of a proper-noun phrase that starts a sentence."""
_NUMBER_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred thousand million billion trillion dozen half""".split()
)


# --------------------------------------------------------------------------- spans


def span_kind(key: str) -> str:
    """A span key's kind: the key up to the first ``.`` (``date.2`` -> ``date``)."""
    return key.split(".", 1)[0]


def sentence_starts(text: str) -> list[int]:
    """The character offset of each sentence of `text`, ascending, the first 0: pysbd's
    sentences (English), and each line too, since a line break ends a Markdown heading, list
    item or table row that no period ends."""
    import pysbd

    segments = pysbd.Segmenter(language="en", clean=False).segment(text)
    starts, at = {0}, 0
    for segment in segments:
        # pysbd without cleaning gives back the text's characters in order; `find` keeps the
        # offsets right should a version ever drop whitespace between sentences
        found = text.find(segment.strip(), at) if segment.strip() else -1
        if found >= 0:
            starts.add(found)
            at = found + len(segment.strip())
    starts.update(m.end() for m in re.finditer(r"\n\s*", text))
    return sorted(starts)


def _sentence_of(starts: Sequence[int], pos: int) -> int:
    """Start of the sentence holding character `pos`."""
    return max(s for s in starts if s <= pos)


def find_spans(text: str, starts: Sequence[int] | None = None) -> dict[str, tuple[int, int]]:
    """Dates, numbers with units and proper-noun phrases in `text` (the module's rule), keyed
    by kind and count in text order (``date``, ``date.2``, ``number``, ``name``, ...), ordered
    by start. `starts`: the text's `sentence_starts`, where the caller has them."""
    taken: list[tuple[int, int, str]] = []

    def take(start: int, end: int, kind: str) -> None:
        if not any(start < e and end > s for s, e, _ in taken):
            taken.append((start, end, kind))

    for match in _DATE.finditer(text):
        take(*_trimmed(text, match.start(), match.end()), "date")
    for match in _NUMBER.finditer(text):
        take(match.start(), match.end(), "number")
    for match in (*_YEAR.finditer(text), *_MONTH_ALONE.finditer(text)):
        take(match.start(), match.end(), "date")
    for start, end in _proper_nouns(text, taken, starts or sentence_starts(text)):
        take(start, end, "name")
    taken.sort()
    out: dict[str, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    for start, end, kind in taken:
        counts[kind] = counts.get(kind, 0) + 1
        out[kind if counts[kind] == 1 else f"{kind}.{counts[kind]}"] = (start, end)
    return out


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """A match without the period a month abbreviation may end with at the span's end."""
    return (start, end - 1) if text[end - 1] == "." else (start, end)


def _proper_nouns(
    text: str, taken: Sequence[tuple[int, int, str]], starts: Sequence[int]
) -> list[tuple[int, int]]:
    """Proper-noun phrases of `text` that overlap none of `taken` (the rule's step 4)."""
    words = [
        m
        for m in _WORD.finditer(text)
        if not any(m.start() < e and m.end() > s for s, e, _ in taken)
    ]
    runs: list[list[re.Match]] = []
    current: list[re.Match] = []
    for word in words:
        joined = current and _joins(text, current[-1], word)
        if _capitalised(word.group()):
            if not joined:
                current = []
                runs.append(current)
            current.append(word)
        elif joined and word.group() in CONNECTORS and len(current) > 0:
            current.append(word)
        else:
            current = []
    out = []
    for run in runs:
        while run and not _capitalised(run[-1].group()):  # a trailing connector
            run.pop()
        first_of_sentence = run and not re.search(
            r"[^\W_]", text[_sentence_of(starts, run[0].start()) : run[0].start()]
        )
        if first_of_sentence:
            while run and run[0].group() in SENTENCE_STARTERS:
                run.pop(0)
            while run and not _capitalised(run[0].group()):  # a connector left in front
                run.pop(0)
            if len(run) == 1 and not re.search(
                r"[^\W_]", text[_sentence_of(starts, run[0].start()) : run[0].start()]
            ):
                continue  # a lone capitalised first word: any word starts a sentence so
        if run:
            end = run[-1].end()
            if text[end - 2 : end] in ("'s", "’s"):
                end -= 2
            out.append((run[0].start(), end))
    return out


def _capitalised(word: str) -> bool:
    return word[0].isupper() and word not in _NOT_NAMES


def _joins(text: str, before: re.Match, after: re.Match) -> bool:
    """Whether two words are next to each other in one name: one space apart, or a period and
    a space after an initial or an abbreviation such as "St"."""
    gap = text[before.end() : after.start()]
    if gap == " ":
        return True
    word = before.group()
    return gap == ". " and (len(word) == 1 and word.isupper() or word in _ABBREVIATED)


def answer_kind(text: str) -> str:
    """The kind of an answer's text (one of `ANSWER_KINDS`), in this order:

    - ``date``: one date of `find_spans`' rule (a bare year included) covers all of it;
    - ``number``: it starts with a digit, a currency sign, or a number word ("twelve", "half");
    - ``name``: after a leading "the"/"a"/"an", every word is capitalised or a connector (of,
      de, ...), with no digit;
    - ``other``: anything else."""
    text = text.strip()
    for match in (*_DATE.finditer(text), *_YEAR.finditer(text), *_MONTH_ALONE.finditer(text)):
        if _trimmed(text, match.start(), match.end()) in ((0, len(text)), (0, len(text) - 1)):
            return "date"
    words = _WORD.findall(text)
    if re.match(r"[\d$£€¥]", text) or (words and words[0].lower() in _NUMBER_WORDS):
        return "number"
    if words and words[0].lower() in ("the", "a", "an"):
        words = words[1:]
    if (
        words
        and not re.search(r"\d", text)
        and _capitalised(words[0])
        and all(w[0].isupper() or w in CONNECTORS for w in words)
    ):
        return "name"
    return "other"


# --------------------------------------------------------------------------- cloze prompts


def subject(record: Record) -> str | None:
    """What a record's probes name before each sentence: ``meta["title"]`` (whitespace
    collapsed, ``_`` read as a space as in Wikipedia's page names), else the text of its
    ``name`` span, else None."""
    title = record.meta.get("title")
    if isinstance(title, str) and title.replace("_", " ").strip():
        return " ".join(title.replace("_", " ").split())  # SQuAD's titles: Wikipedia's names
    if "name" in record.spans:
        start, end = record.spans["name"]
        return record.text[start:end].strip() or None
    return None


def cloze_prompt(about: str | None, text: str, start: int, starts: Sequence[int]) -> str:
    """``"{about}: {the sentence up to start}"``, the sentence's whitespace collapsed and its
    end stripped (a candidate answer is scored as ``" " + answer``; marks without a word, such
    as a Markdown heading's ``#``, count as nothing); the sentence alone where
    it names `about` already ("Anna Bell was born on") or there is no `about`; "" when both
    are empty."""
    before = " ".join(text[_sentence_of(starts, start) : start].split())
    if not re.search(r"[^\W_]", before):  # only marks before the span ("#", "-", a quote)
        before = ""
    if about is None or re.search(rf"(?<!\w){re.escape(about)}(?!\w)", before):
        return before
    return f"{about}: {before}" if before else f"{about}:"


def contains_answer(prompt: str, answers: Sequence[str]) -> bool:
    """Whether `prompt` holds one of `answers` as whole words after normalisation (SQuAD's:
    case, punctuation and articles aside); an answer that normalises to nothing counts as held,
    since nothing could tell it from the prompt."""
    said = f" {normalize_answer(prompt)} "
    return any(not normalize_answer(a) or f" {normalize_answer(a)} " in said for a in answers)


@dataclass
class ProbeSkips:
    """Spans that got no probe, by why (see `build_probes`)."""

    answer_in_prompt: int = 0
    """The prompt (subject or the sentence before the span) would contain the answer."""
    no_context: int = 0
    """The span starts its sentence and the record has no subject: an empty prompt."""
    empty_span: int = 0
    """The span holds no word (``start == end``, or only punctuation and spaces)."""

    @property
    def total(self) -> int:
        return self.answer_in_prompt + self.no_context + self.empty_span

    def describe(self) -> str:
        parts = [
            (self.answer_in_prompt, "whose prompt would contain the answer"),
            (self.no_context, "that start a sentence of a text with no title or name"),
            (self.empty_span, "that hold no word"),
        ]
        return "; ".join(f"{n} {why}" for n, why in parts if n)


@dataclass
class ProbeConfig:
    """Options of `build_probes` (a run config's ``corpus.probes``; `elusive probes build`)."""

    max_probes: int | None = None
    """Keep a seeded sample of this many probes (in corpus order); None keeps all."""
    seed: int = 0
    """Seed of the sample; the same seed gives the same probes."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise CorpusError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        if self.max_probes is not None and self.max_probes < 1:
            raise CorpusError(f"{name('max_probes')} must be at least 1, got {self.max_probes}")


@dataclass
class Probes:
    """What `build_probes` made: the probes, the skipped spans, and how many records had their
    spans found by `find_spans`."""

    items: list[QAItem]
    skipped: ProbeSkips = field(default_factory=ProbeSkips)
    found_in: int = 0


def build_probes(records: Sequence[Record], config: ProbeConfig | None = None) -> Probes:
    """One span-cloze probe per span of each record (its own spans, else `find_spans`'), in
    record then span order: id ``{record id}:{span key}``, no question, ``field`` and ``kind``
    the span kind, the span's text as answer, the cloze prompt of the module docstring.
    Spans whose prompt would be empty or contain the answer are skipped and counted. A
    CorpusError names the corpus problem when no probe is left."""
    config = config or ProbeConfig()
    config.validate()
    items: list[QAItem] = []
    skipped = ProbeSkips()
    found_in = 0
    for record in records:
        starts = sentence_starts(record.text)
        if not record.spans:
            record = replace(record, spans=find_spans(record.text, starts))
            found_in += 1
        about = subject(record)
        spans = record.spans
        for key, (start, end) in sorted(spans.items(), key=lambda kv: (kv[1], kv[0])):
            answer = record.text[start:end].strip()
            if not normalize_answer(answer):
                skipped.empty_span += 1
                continue
            prompt = cloze_prompt(about, record.text, start, starts)
            if not prompt:
                skipped.no_context += 1
                continue
            if contains_answer(prompt, [answer]):
                skipped.answer_in_prompt += 1
                continue
            kind = span_kind(key)
            items.append(
                QAItem(
                    id=f"{record.id}:{key}",
                    source_id=record.id,
                    question=None,
                    answers=(answer,),
                    field=kind,
                    cloze=prompt,
                    kind=kind,
                )
            )
    if config.max_probes is not None and config.max_probes < len(items):
        order = list(range(len(items)))
        random.Random(f"{config.seed}:probes").shuffle(order)
        items = [items[i] for i in sorted(order[: config.max_probes])]
    if not items:
        why = f" (skipped: {skipped.describe()})" if skipped.total else ""
        raise CorpusError(f"no span-cloze probes: the texts hold no spans to ask about{why}")
    return Probes(items, skipped, found_in)


def warn_skipped(probes: Probes, where: str) -> None:
    """A DroppedDataWarning counting the spans of `where` that got no probe, if any."""
    if probes.skipped.total:
        warnings.warn(
            f"{where}: {probes.skipped.total} spans got no cloze probe "
            f"({probes.skipped.describe()})",
            DroppedDataWarning,
            stacklevel=2,
        )


def squad_clozes(records: Sequence[Record], items: Sequence[QAItem]) -> tuple[list[QAItem], int]:
    """The QA items with their answer-span cloze and answer kind: each item's first located
    gold answer (the record's span keyed by the item's id, from ``answer_start``) cut out of
    its sentence, after the article title (`cloze_prompt`). ``kind`` (`answer_kind` of that
    answer, or of the first gold where none is located) is the pool of the item's distractors.
    An item whose prompt would contain one of its golds keeps ``cloze`` None; returns the items
    and how many those were."""
    by_id: dict[str, Record] = {r.id: r for r in records}
    starts: dict[str, list[int]] = {}
    out, held = [], 0
    for item in items:
        record = by_id.get(item.source_id)
        span = record.spans.get(item.id) if record is not None else None
        if span is None:
            out.append(replace(item, kind=answer_kind(item.answers[0])))
            continue
        text = record.text
        if record.id not in starts:
            starts[record.id] = sentence_starts(text)
        prompt = cloze_prompt(subject(record), text, span[0], starts[record.id])
        kind = answer_kind(text[span[0] : span[1]])
        if not prompt or contains_answer(prompt, item.answers):
            held += 1
            out.append(replace(item, kind=kind))
        else:
            out.append(replace(item, cloze=prompt, kind=kind))
    return out, held


def write_probes(probes: Sequence[QAItem], path: str | Path) -> Path:
    """Write probes in the qa.jsonl form without ``question`` (atomically), as
    `elusive.corpus.records.read_qa` reads them back."""
    return write_jsonl(path, (qa_to_json(p, "source_id") for p in probes))


def probe_file(
    corpus: str | Path,
    out: str | Path,
    config: ProbeConfig | None = None,
    text_field: str = "text",
    chunk: int | None = None,
    model: str | None = None,
) -> Probes:
    """`elusive probes build`: the probes of a user corpus (`read_corpus`) written to `out`
    for a user to read, edit and give as ``corpus.qa``. With `chunk`, the probes are of the
    passages a run with that ``corpus.chunk`` and `model` trained trains on (the same ids,
    ``doc#k``), cut with `model`'s tokenizer. The output is checked before the corpus is read
    (a folder, a link, the corpus itself are refused)."""
    from elusive.errors import ElusiveError

    config = config or ProbeConfig()
    config.validate()
    if chunk is not None and model is None:
        raise ElusiveError("--chunk needs --model: passages are counted in its tokens")
    if chunk is not None and chunk < 2:
        raise ElusiveError(f"--chunk must be at least 2, got {chunk}")
    check_out_file(out)
    check_apart([out], {"CORPUS": corpus})
    records = read_corpus(corpus, text_field=text_field)
    if chunk is not None:
        from elusive.corpus.chunking import chunk_records
        from elusive.models import load_tokenizer

        records = chunk_records(records, load_tokenizer(model), chunk)
    probes = build_probes(records, config)
    write_probes(probes.items, out)
    return probes

"""Span-cloze probes (elusive.corpus.cloze): spans found in text, cloze prompts cut right before
their span, answer kinds, distractors of the same kind, and the probes file."""

import json
import random
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pysbd
import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.bios import BiosConfig, generate_bios
from elusive.corpus.cloze import (
    ANSWER_KINDS,
    ProbeConfig,
    answer_kind,
    build_probes,
    find_spans,
    span_kind,
    subject,
    write_probes,
)
from elusive.corpus.records import QAItem, Record, read_qa
from elusive.corpus.squad import read_squad
from elusive.evaluation.probes import pick_distractors
from elusive.io import CorpusError, DroppedDataWarning
from elusive.metrics import normalize_answer

DATA = Path(__file__).parent / "data"
SQUAD_FIXTURES = [DATA / "squad_small.json", DATA / "squad_wiki_sample.json"]

TEXT = (
    "Lake Varren is a lake in St. Louis County. It was formed on January 5, 1821 and is "
    "112 metres deep. In 1968 the University of Oxford sent J. R. Smith there; Smith's report "
    "cost $2.5 million. The lake covers 3,400 km² and 40% of it freezes in April, at -12 °C. "
    "Paris. Yesterday Anna Bell left for the 1990s, on 4 July 2001 (2001-07-04)."
)
# Written by hand from the rule of elusive.corpus.cloze, in text order.
EXPECTED = [
    ("name", "Lake Varren"),  # two words: kept at a sentence's start
    ("name.2", "St. Louis County"),  # an abbreviation's period inside a name
    ("date", "January 5, 1821"),
    ("number", "112 metres"),
    ("date.2", "1968"),  # a year alone; "In" starts the sentence and is no name
    ("name.3", "University of Oxford"),  # a connector inside, "the" before is lowercase
    ("name.4", "J. R. Smith"),  # initials
    ("name.5", "Smith"),  # without the possessive 's
    ("number.2", "$2.5 million"),
    ("number.3", "3,400 km²"),
    ("number.4", "40%"),
    ("date.3", "April"),  # a month alone
    ("number.5", "-12 °C"),  # with its sign; "Paris." alone starts a sentence: not taken
    ("name.6", "Anna Bell"),  # "Yesterday" dropped; "1990s" is a decade, not a year
    ("date.4", "4 July 2001"),
    ("date.5", "2001-07-04"),
]


def located(text, expected):
    """The (start, end) of each expected substring, searched in text order."""
    out, at = {}, 0
    for key, value in expected:
        start = text.index(value, at)
        out[key] = (start, start + len(value))
        at = start + len(value)
    return out


def test_find_spans_on_a_fixed_text():
    spans = find_spans(TEXT)
    assert {k: TEXT[a:b] for k, (a, b) in spans.items()} == dict(EXPECTED)
    assert spans == located(TEXT, EXPECTED)
    assert list(spans) == [k for k, _ in EXPECTED]  # ordered by start
    assert find_spans(TEXT) == spans  # deterministic
    assert [span_kind(k) for k in spans][:3] == ["name", "name", "date"]


@pytest.mark.parametrize(
    "text, kind",
    [
        ("1968", "date"),
        ("March 25, 1973", "date"),
        ("April", "date"),
        ("112 metres", "number"),
        ("six trains", "number"),
        ("$5 million", "number"),
        ("10th century", "number"),
        ("the Sollen River", "name"),
        ("University of Oxford", "name"),
        ("Vienna", "name"),
        ("a feather quill", "other"),
        ("in April", "other"),
        ("cerium", "other"),
    ],
)
def test_answer_kind(text, kind):
    assert answer_kind(text) == kind


def sentence_before(text, start):
    """Slow reference: the text of the sentence holding `start` up to it (pysbd's sentences,
    located one after another), whitespace collapsed."""
    at, begin = 0, 0
    for sentence in pysbd.Segmenter(language="en", clean=False).segment(text):
        found = text.index(sentence.strip(), at)
        if found > start:
            break
        begin, at = found, found + len(sentence.strip())
    return " ".join(text[begin:start].split())


def check_cloze(record, item, start):
    """The prompt is the subject and the sentence up to `start`, never holds a gold, names the
    subject."""
    about = subject(record)
    before = sentence_before(record.text, start)
    assert item.cloze in (f"{about}: {before}" if before else f"{about}:", before)
    assert about in item.cloze
    said = f" {normalize_answer(item.cloze)} "
    for gold in item.answers:
        assert f" {normalize_answer(gold)} " not in said
        assert gold not in item.cloze


def user_records():
    bios = generate_bios(BiosConfig(n=6, seed=3))[0]
    plain = [
        Record("lake", TEXT, meta={"title": "Lake Varren"}),
        Record("bell", "Anna Bell was born on 3 May 1950. She studied at Kyoto University."),
        Record("untitled", "The bridge opened in 1932. It is 503 metres long."),
    ]
    return [*bios, *plain]


def test_every_cloze_prompt_ends_right_before_its_span_and_never_contains_it():
    records = user_records()
    probes = build_probes(records)
    by_id = {r.id: r for r in records}
    assert len(probes.items) > 30 and probes.found_in == 3  # bios keep their spans
    for item in probes.items:
        record = by_id[item.source_id]
        record = replace(record, spans=record.spans or find_spans(record.text))
        key = item.id.removeprefix(f"{record.id}:")
        start, end = record.spans[key]
        assert item.answers == (record.text[start:end],)
        assert item.question is None and item.field == item.kind == span_kind(key)
        if subject(record) is None:  # "untitled": no title, no name: the sentence alone
            assert item.cloze == sentence_before(record.text, start)
        else:
            check_cloze(record, item, start)
    by_kind = {(i.source_id, i.field) for i in probes.items}
    assert {("lake", "date"), ("lake", "number"), ("untitled", "number")} <= by_kind
    prompts = {i.id: i.cloze for i in probes.items}
    assert prompts["lake:number"] == "Lake Varren: It was formed on January 5, 1821 and is"
    assert prompts["bell:date"] == "Anna Bell was born on"  # names its subject already
    assert prompts["untitled:number"] == "It is"
    # A biography's name span is the subject of its other probes: no probe of its own.
    assert not any(i.id.endswith(":name") for i in probes.items if i.source_id.startswith("p"))
    again = build_probes(records)
    assert again == probes and len({i.id for i in probes.items}) == len(probes.items)


def test_probes_whose_prompt_holds_the_answer_are_skipped_and_counted():
    records = [
        Record("a", "Oslo is the capital. It was founded in 1048.", meta={"title": "Oslo 1048"}),
        Record("b", "Bergen lies in 1070 and 1070."),  # the year repeats in its own sentence
        Record("c", "In 1990 it rained."),  # a year that starts the sentence, no subject
        Record("d", "Quiet ...", spans={"dots": (6, 9)}),  # a span of punctuation alone
    ]
    probes = build_probes(records)
    skipped = probes.skipped
    assert skipped.answer_in_prompt == 2  # "1048" is in the title; the second "1070"
    assert skipped.empty_span == 1
    assert [i.id for i in probes.items] == ["b:date", "c:date"]
    assert [i.cloze for i in probes.items] == ["Bergen lies in", "In"]
    assert "whose prompt would contain the answer" in skipped.describe()
    no_context = build_probes([Record("e", "1990 was dry. It rained in 1991.")]).skipped
    assert no_context.no_context == 1  # "1990" starts the text, which has no subject
    with pytest.raises(CorpusError, match="no span-cloze probes.*skipped: 1 that hold no"):
        build_probes([Record("d", "Quiet ...", spans={"dots": (6, 9)})])


def test_max_probes_is_a_seeded_ordered_sample():
    records = user_records()
    every = build_probes(records).items
    some = build_probes(records, ProbeConfig(max_probes=5, seed=2)).items
    assert len(some) == 5 and some == [i for i in every if i in some]
    assert some == build_probes(records, ProbeConfig(max_probes=5, seed=2)).items
    samples = {
        tuple(i.id for i in build_probes(records, ProbeConfig(5, s)).items) for s in range(6)
    }
    assert len(samples) > 1
    with pytest.raises(CorpusError, match="--max-probes must be at least 1, got 0"):
        build_probes(records, ProbeConfig(max_probes=0))


def test_distractors_are_same_kind_spans_of_other_passages_never_the_gold():
    items = build_probes(user_records()).items
    answers_of = {}
    for item in items:
        answers_of.setdefault((item.kind, item.source_id), set()).add(item.answers[0])
    for seed in range(3):
        drawn = pick_distractors(items, 4, seed)
        assert drawn == pick_distractors(list(reversed(items)), 4, seed)[::-1]  # order-free
        for item, wrong in zip(items, drawn, strict=True):
            golds = {normalize_answer(a) for a in item.answers}
            assert not golds & {normalize_answer(w) for w in wrong}
            others = {
                a for (kind, source), found in answers_of.items() for a in found
                if kind == item.kind and source != item.source_id
            }  # fmt: skip
            assert set(wrong) <= others
            own = {normalize_answer(a) for a in answers_of[item.kind, item.source_id]}
            assert not own & {normalize_answer(w) for w in wrong}
            assert len(wrong) == min(4, len({normalize_answer(a) for a in others} - own))


def _reference_distractors(items, k, seed):
    """The field-pooled draw, written out the slow way: what every item without a kind gets."""
    out = []
    for item in items:
        golds = {normalize_answer(a) for a in item.answers}
        spelling = {}
        for other in items:
            if other.field == item.field:
                for answer in other.answers:
                    spelling.setdefault(normalize_answer(answer), answer)
        wrong = [spelling[n] for n in sorted(spelling) if n not in golds]
        out.append(tuple(random.Random(f"{seed}:{item.id}").sample(wrong, min(k, len(wrong)))))
    return out


def test_items_without_a_kind_draw_as_before():
    questions = generate_bios(BiosConfig(n=10, seed=1))[1]
    assert all(q.kind is None for q in questions)
    for seed in (0, 5):
        assert pick_distractors(questions, 3, seed) == _reference_distractors(questions, 3, seed)


@pytest.mark.parametrize("fixture", SQUAD_FIXTURES, ids=lambda p: p.stem)
def test_squad_answer_span_cloze_ends_right_before_the_answer(fixture):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedDataWarning)  # the sample's v2.0 questions
        records, items = read_squad(fixture)
    by_id = {r.id: r for r in records}
    with_cloze = [i for i in items if i.cloze is not None]
    assert len(with_cloze) >= len(items) - 1
    for item in items:
        record = by_id[item.source_id]
        start, end = record.spans[item.id]
        assert record.text[start:end] == item.answers[0]
        assert item.kind == answer_kind(item.answers[0]) and item.kind in ANSWER_KINDS
        if item.cloze is not None:
            check_cloze(record, item, start)
            title = record.meta["title"].replace("_", " ")
            assert item.cloze.startswith(title) or title in item.cloze
    drawn = pick_distractors(items, 3, 0)
    for item, wrong in zip(items, drawn, strict=True):
        golds = {normalize_answer(a) for a in item.answers}
        assert not golds & {normalize_answer(w) for w in wrong}
        for w in wrong:
            donors = [o for o in items if w in o.answers]
            assert any(o.kind == item.kind and o.source_id != item.source_id for o in donors)


def test_squad_title_that_names_the_answer_gets_no_cloze_and_is_counted():
    """The real sample's "Computational_complexity_theory" paragraph asks for the theory's name:
    its prompt would be the title itself."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records, items = read_squad(DATA / "squad_wiki_sample.json")
    said = [str(w.message) for w in caught if w.category is DroppedDataWarning]
    assert any("1 questions get no answer-span cloze" in line for line in said), said
    held = [i for i in items if i.cloze is None]
    assert [i.answers[0] for i in held] == ["Computational complexity theory"]


def test_probes_file_reads_back(tmp_path):
    probes = build_probes(user_records()).items
    path = write_probes(probes, tmp_path / "probes.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all("question" not in line and line["cloze"] for line in lines)
    assert read_qa(path) == probes


@pytest.mark.parametrize(
    "line, message",
    [
        ({"source_id": "a", "answer": "x"}, "missing field 'question' (or 'cloze', for a probe"),
        ({"question": " ", "answer": "x"}, "field 'question' must be a non-empty string"),
        ({"cloze": "T: in", "answer": "x", "kind": 3}, "field 'kind' must be a non-empty string"),
    ],
)
def test_read_qa_refuses_a_probe_without_cloze_in_one_line(tmp_path, line, message):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(CorpusError, match=re.escape(f"{path}:1: {message}")) as err:
        read_qa(path)
    assert "\n" not in str(err.value)


runner = CliRunner()


def test_cli_probes_build(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [
        {"id": "lake", "title": "Lake Varren", "body": TEXT},
        {
            "id": "bell",
            "body": "Anna Bell was born on 3 May 1950. She studied at Kyoto University.",
        },
    ]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probes.jsonl"
    result = runner.invoke(
        app, ["probes", "build", str(corpus), "--out", str(out), "--text-field", "body"]
    )
    assert result.exit_code == 0, result.output
    probes = read_qa(out, sources={"lake", "bell"})
    assert f"wrote {len(probes)} probes (" in result.output and "date " in result.output
    assert {p.field for p in probes} == {"name", "date", "number"}
    result = runner.invoke(app, ["probes", "build", str(corpus), "--out", str(corpus)])
    assert result.exit_code == 2 and "is also the input CORPUS" in result.output
    result = runner.invoke(
        app, ["probes", "build", str(corpus), "--out", str(tmp_path / "x.jsonl")]
    )
    assert result.exit_code == 2 and "missing field 'text'" in result.output
    assert not (tmp_path / "x.jsonl").exists()
    text = tmp_path / "notes.txt"
    text.write_text("The bridge opened in 1932.\n\nIt is 503 metres long.\n")
    result = runner.invoke(app, ["probes", "build", str(text), "--out", str(tmp_path / "t.jsonl")])
    assert result.exit_code == 0, result.output
    assert [p.answers for p in read_qa(tmp_path / "t.jsonl")] == [("1932",), ("503 metres",)]


def test_probe_items_as_qaitems():
    item = QAItem("x", "s", None, ("1821",), "date", "T: in", "date")
    assert item.question is None and item.kind == "date"


def test_cli_probes_build_on_chunked_markdown_names_the_runs_passages(tmp_path):
    """--chunk with --model: the probes are of the passages a run with that corpus.chunk
    trains on (ids doc#k), and a line break ends a sentence (a heading is no prompt's start)."""
    from elusive.corpus.chunking import chunk_records
    from elusive.corpus.records import read_corpus
    from elusive.models import load_tokenizer
    from elusive.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    pages = tmp_path / "pages"
    pages.mkdir()
    sections = [
        f"## Part {j}\n\nThe mast {j} was raised on {j + 1} May 19{50 + j}. "
        f"It is {j + 10} metres tall and weighs {j + 3} kg."
        for j in range(4)
    ]
    (pages / "mast.md").write_text("# Mast Register\n\n" + "\n\n".join(sections) + "\n")
    out = tmp_path / "probes.jsonl"
    args = ["probes", "build", str(pages), "--out", str(out)]
    result = runner.invoke(app, [*args, "--chunk", "40"])
    assert result.exit_code == 2 and "--chunk needs --model" in result.output
    result = runner.invoke(app, [*args, "--chunk", "40", "--model", str(model)])
    assert result.exit_code == 0, result.output
    passages = chunk_records(read_corpus(pages), load_tokenizer(str(model)), 40)
    assert len(passages) > 1
    probes = read_qa(out, sources={p.id for p in passages})
    assert {p.source_id for p in probes} == {p.id for p in passages}
    for item in probes:
        assert "#" not in item.cloze.split(": ", 1)[-1]  # no heading line in the prompt
    dates = [p for p in probes if p.field == "date"]
    assert [p.answers[0] for p in dates] == [f"{j + 1} May 19{50 + j}" for j in range(4)]

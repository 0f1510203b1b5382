import json
import re
import sys

import datasets  # the dev extra brings it
import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.bios import FIELDS, TEMPLATES, BiosConfig, generate_bios, load_pools, write_bios
from elusive.corpus.records import markdown_headings, read_corpus, read_qa
from elusive.io import CorpusError


def test_same_seed_same_bytes_and_different_seed_differs(tmp_path):
    a = write_bios(BiosConfig(n=50, seed=3), tmp_path / "a")
    b = write_bios(BiosConfig(n=50, seed=3), tmp_path / "b")
    c = write_bios(BiosConfig(n=50, seed=4), tmp_path / "c")
    for x, y in zip(a, b, strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert a[0].read_bytes() != c[0].read_bytes()


def test_spans_slice_values_and_names_are_distinct():
    records, questions = generate_bios(BiosConfig(n=1000, seed=0))
    assert len({r.meta["name"] for r in records}) == 1000
    for r in records:
        assert r.text[slice(*r.spans["name"])] == r.meta["name"]
        for f in FIELDS:
            assert r.text[slice(*r.spans[f])] == r.meta["fields"][f]
    assert len(questions) == 5 * 1000
    by_id = {r.id: r for r in records}
    for q in questions[:25]:
        person = by_id[q.source_id]
        assert person.meta["name"] in q.question
        assert q.answers == (person.meta["fields"][q.field],)


def test_default_text_uses_paper_wording():
    r = generate_bios(BiosConfig(n=1, seed=0))[0][0]
    name, v = r.meta["name"], r.meta["fields"]
    he, his = ("He", "his") if r.meta["gender"] == "male" else ("She", "her")
    assert r.text == (
        f"{name} was born on {v['date']}. {he} spent {his} early years in {v['city']}. "
        f"{he} received mentorship and guidance from faculty members at {v['university']}. "
        f"{he} completed {his} education with a focus on {v['major']}. "
        f"{he} had a professional role at {v['company']}."
    )


def test_dates_are_real_calendar_dates_in_range():
    import datetime as dt

    for r in generate_bios(BiosConfig(n=300, seed=1))[0]:
        d = dt.datetime.strptime(r.meta["fields"]["date"], "%B %d, %Y").date()
        assert 1950 <= d.year <= 2000
        assert r.meta["fields"]["date"] == f"{d:%B} {d.day}, {d.year}"


def test_company_drops_its_city():
    companies = load_pools().company
    assert "3M" in companies and not any(";" in c for c in companies)


def test_field_order_puts_name_in_first_sentence():
    order = ("company", "major", "university", "city", "date")
    for r in generate_bios(BiosConfig(n=20, seed=0, field_order=order))[0]:
        starts = [r.spans[f][0] for f in order]
        assert starts == sorted(starts)
        assert r.text.startswith(r.meta["name"] + " had a professional role at ")


def test_shuffle_sentences_varies_order_per_person_and_keeps_spans():
    records = generate_bios(BiosConfig(n=200, seed=0, shuffle_sentences=True))[0]
    orders = {tuple(sorted(FIELDS, key=lambda f: r.spans[f][0])) for r in records}
    assert len(orders) > 20
    for r in records:
        assert r.spans["name"][0] == 0
        for f in FIELDS:
            assert r.text[slice(*r.spans[f])] == r.meta["fields"][f]


def test_templates_option_uses_paraphrases():
    def city_template(r):
        """Index of the city template whose text precedes the city value."""
        before = r.text[: r.spans["city"][0]]
        heads = [t.split("{subject} ")[1].split("{value}")[0] for t in TEMPLATES["city"]]
        return next(
            i
            for i, h in enumerate(heads)
            if before.endswith(h.format(poss="his")) or before.endswith(h.format(poss="her"))
        )

    used = {city_template(r) for r in generate_bios(BiosConfig(n=300, seed=0, templates=3))[0]}
    assert used == {0, 1, 2}
    assert {city_template(r) for r in generate_bios(BiosConfig(n=300, seed=0))[0]} == {0}


@pytest.mark.parametrize(
    "config, message",
    [
        (BiosConfig(n=0), "--n must be at least 1"),
        (BiosConfig(templates=len(TEMPLATES["date"]) + 1), "--templates must be in"),
        (BiosConfig(field_order=("date", "city")), "--field-order must be a permutation"),
        (BiosConfig(n=10**9), "exceeds the"),
    ],
)
def test_bad_config_is_a_clear_error(config, message):
    with pytest.raises(CorpusError, match=message):
        generate_bios(config)


def test_people_jsonl_reads_back_as_records(tmp_path):
    people, qa = write_bios(BiosConfig(n=5, seed=0), tmp_path)
    records = read_corpus(people)
    original = generate_bios(BiosConfig(n=5, seed=0))[0]
    assert [r.text for r in records] == [r.text for r in original]
    assert records[0].spans == original[0].spans
    items = read_qa(qa)
    assert len(items) == 25 and items[0].source_id == "p0" and items[0].field == "date"
    assert items == generate_bios(BiosConfig(n=5, seed=0))[1]  # cloze prompts included
    assert items[0].cloze == f"{original[0].meta['name']} was born on"


def test_reader_folder_of_txt_and_paragraph_file(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("Second doc.\n")
    (tmp_path / "docs" / "sub" / "a.txt").write_text("First doc.")
    records = read_corpus(tmp_path / "docs")
    assert [(r.id, r.text) for r in records] == [
        ("b.txt", "Second doc."),
        ("sub/a.txt", "First doc."),
    ]
    book = tmp_path / "book.txt"
    book.write_text("Para one\ncontinues.\n\n\nPara two.\n")
    assert [r.text for r in read_corpus(book)] == ["Para one continues.", "Para two."]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "ok"}', "{not json"], r"corpus.jsonl:2: invalid JSON"),
        (['{"id": 1}'], r"corpus.jsonl:1: missing field 'text'"),
        (['{"text": 5}'], r"corpus.jsonl:1: field 'text' must be a string"),
        (['{"text": "  "}'], r"corpus.jsonl:1: field 'text' is empty"),
        (['["text"]'], r"corpus.jsonl:1: expected a JSON object"),
        (['{"text": "abc", "spans": {"name": [0, 9]}}'], r"corpus.jsonl:1: span 'name'"),
        (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "duplicate id 'a'"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_reader_rejects_missing_and_unknown_inputs(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "x.pdf").write_text("a,b\n")
    with pytest.raises(CorpusError, match=r"expected a .md, .txt or .jsonl file"):
        read_corpus(tmp_path / "x.pdf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.pdf").write_text("not read")
    with pytest.raises(CorpusError, match=r"no .md, .txt or .jsonl files"):
        read_corpus(tmp_path / "empty")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_corpus(bad)


def test_read_qa_errors_name_the_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answers": []}) + "\n")
    with pytest.raises(CorpusError, match=r"qa.jsonl:1: field 'answers'"):
        read_qa(path)
    path.write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(CorpusError, match=r"qa.jsonl:1: missing field 'answer'"):
        read_qa(path)
    path.write_text(json.dumps({"question": "Q?", "answer": "A", "cloze": 3}) + "\n")
    with pytest.raises(CorpusError, match=r"qa.jsonl:1: field 'cloze' must be a non-empty"):
        read_qa(path)


def test_utf8_bom_is_stripped_from_txt_and_jsonl(tmp_path):
    """Editors on Windows start files with a byte-order mark; it must not become text."""
    bom = "\ufeff"
    book = tmp_path / "book.txt"
    book.write_text(bom + "Para one.\n\nPara two.\n", encoding="utf-8")
    assert [r.text for r in read_corpus(book)] == ["Para one.", "Para two."]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(bom + "A doc.", encoding="utf-8")
    assert read_corpus(tmp_path / "docs")[0].text == "A doc."
    lines = tmp_path / "corpus.jsonl"
    lines.write_text(bom + '{"id": "a", "text": "A text."}\n', encoding="utf-8")
    assert [(r.id, r.text) for r in read_corpus(lines)] == [("a", "A text.")]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(bom + '{"question": "Q?", "answer": "A"}\n', encoding="utf-8")
    assert read_qa(qa)[0].question == "Q?"


def test_read_qa_with_sources_refuses_a_question_about_another_text(tmp_path):
    path = tmp_path / "qa.jsonl"
    lines = [
        {"person_id": "p1", "question": "Q?", "answer": "A"},
        {"question": "Q2?", "answer": "B"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert len(read_qa(path)) == 2  # without sources: any questions, as for `elusive evaluate`
    with pytest.raises(CorpusError, match=r"qa.jsonl:1: source_id 'p1' is not the id of any"):
        read_qa(path, sources={"p0"})
    with pytest.raises(CorpusError, match=r"qa.jsonl:2: missing field 'source_id'"):
        read_qa(path, sources={"p1"})


def test_read_qa_refuses_a_field_named_overall(tmp_path):
    """``overall`` names the scores over every field: a field of that name would merge in."""
    path = tmp_path / "qa.jsonl"
    lines = [{"question": "Q?", "answer": "A", "field": "city"}]
    lines.append({"question": "R?", "answer": "B", "field": "overall"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(CorpusError, match=r"qa.jsonl:2: field 'field' is 'overall'") as caught:
        read_qa(path)
    assert "\n" not in str(caught.value)
    path.write_text(json.dumps({"question": "Q?", "answer": "A", "field": "Overall"}) + "\n")
    assert read_qa(path)[0].field == "Overall"  # only the exact name is taken


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"text": "q\\udfff?", "answer": "a"}', "'\\udfff' is a lone surrogate, not text"),
        ('{"id": ' + "9" * 5000 + ', "text": "t"}', "unreadable JSON (Exceeds the limit"),
    ],
)
@pytest.mark.parametrize("read", [read_corpus, read_qa])
def test_json_that_python_cannot_hold_is_a_corpus_error_naming_the_line(
    tmp_path, read, line, message
):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "t", "question": "q", "answer": "a"}\n\n' + line + "\n")
    with pytest.raises(CorpusError) as caught:
        read(path)
    assert str(caught.value).startswith(f"{path}:3: ") and message in str(caught.value)
    assert "set_int_max_str_digits" not in str(caught.value)


def test_escaped_surrogate_pairs_are_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "smile \\ud83d\\ude00 and \\u00e9"}\n')
    assert read_corpus(path)[0].text == "smile \U0001f600 and \u00e9"


def test_a_file_too_large_for_memory_is_a_corpus_error(tmp_path, monkeypatch):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "t"}\n')

    def too_large(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(type(path), "read_text", too_large)
    with pytest.raises(CorpusError, match=f"^{path}: too large to read into memory$"):
        read_corpus(path)


# --------------------------------------------------------------------------- Markdown, folders


def test_markdown_file_is_one_record_titled_by_its_first_heading(tmp_path):
    page = tmp_path / "guide.md"
    text = "Intro line.\n\n```python\n# not a heading\n```\n\n## Setup ##\n\nRun it.\n\n# Use\n"
    page.write_text("\n" + text + "\n\n")
    (record,) = read_corpus(page)
    assert record.id == "guide.md"
    assert record.text == text.strip()  # Markdown kept as text, headings included
    assert record.meta == {"source": str(page), "title": "Setup"}
    headings = markdown_headings(record.text)
    assert [(h.level, h.title) for h in headings] == [(2, "Setup"), (1, "Use")]
    for h in headings:
        assert record.text[h.start : h.end].lstrip("#").strip().startswith(h.title)
    untitled = tmp_path / "notes.md"
    untitled.write_text("Just text, #not a heading.\n")
    assert read_corpus(untitled)[0].meta["title"] == "notes"


def test_folder_reads_markdown_text_and_jsonl_sorted_with_relative_ids(tmp_path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "b.md").write_text("# Bee\n\nBees make honey.\n")
    (docs / "a.txt").write_text("A plain text.\n\nIts second paragraph.")
    (docs / "sub" / "c.jsonl").write_text(
        json.dumps({"id": "x1", "text": "First line.", "title": "Ex"})
        + "\n"
        + json.dumps({"text": "Second line."})
        + "\n"
    )
    (docs / "image.png").write_bytes(b"\x89PNG\0\0")  # not a corpus file: left alone
    records = read_corpus(docs)
    assert [r.id for r in records] == ["a.txt", "b.md", "x1", "sub/c.jsonl:line-2"]
    assert records[0].text == "A plain text.\n\nIts second paragraph."  # one record a file
    assert records[1].meta["title"] == "Bee" and records[1].text.startswith("# Bee")
    assert records[2].meta == {"title": "Ex"}
    lines = tmp_path / "one.jsonl"
    lines.write_text(json.dumps({"text": "T.", "title": 3}) + "\n")
    with pytest.raises(CorpusError, match=r"one.jsonl:1: field 'title' must be a string"):
        read_corpus(lines)


def test_text_field_names_the_jsonl_field(tmp_path):
    lines = tmp_path / "c.jsonl"
    lines.write_text(json.dumps({"id": "a", "body": "The body.", "text": "other"}) + "\n")
    (record,) = read_corpus(lines, text_field="body")
    assert record.text == "The body." and "body" not in record.meta
    with pytest.raises(CorpusError, match=r"c.jsonl:1: missing field 'content'"):
        read_corpus(lines, text_field="content")


def _bad_inputs(tmp_path):
    """(path, message) of each kind of bad document."""
    cases = []
    for name, data, message in [
        ("empty.md", b"  \n\n", "empty text"),
        ("empty.txt", b"", "empty text"),
        ("binary.md", b"# Title\n\x00\x01\x02 data", r"a binary file \(it holds NUL bytes\)"),
        ("binary.txt", bytes(range(256)), r"a binary file"),
        ("latin1.md", "# Caf\xe9\n".encode("latin-1"), r"not UTF-8 text .* at byte 5"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        cases.append((path, message))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "good.md").write_text("# Fine\n")
    (folder / "bad.txt").write_bytes(b"\xff\xfe\x00t\x00")
    cases.append((folder, "bad.txt: a binary file"))
    return cases


def test_bad_documents_are_one_line_naming_the_file(tmp_path):
    for path, message in _bad_inputs(tmp_path):
        with pytest.raises(CorpusError, match=message) as caught:
            read_corpus(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_bad_documents_exit_2_on_the_command_line_writing_nothing(tmp_path):
    for path, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        args = ["train", "--model", "m", "--corpus", str(path), "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.startswith(f"error: {path}") and re.search(message, line)
        assert not out.exists()


# --------------------------------------------------------------------------- datasets


def _dataset():
    return datasets.Dataset.from_dict(
        {
            "id": ["d0", "d1"],
            "body": ["First text here.", "Second text."],
            "title": ["One", "Two"],
            "n": [1, 2],
        }
    )


@pytest.mark.parametrize("kind", ["saved", "parquet", "json", "csv"])
def test_hugging_face_datasets_are_read_with_their_text_field(tmp_path, kind):
    data = _dataset()
    path = tmp_path / (kind if kind == "saved" else f"data.{kind}")
    {
        "saved": data.save_to_disk,
        "parquet": data.to_parquet,
        "json": data.to_json,
        "csv": data.to_csv,
    }[kind](str(path))
    before = sorted(p.name for p in tmp_path.iterdir())
    records = read_corpus(path, text_field="body")
    assert [(r.id, r.text, r.meta) for r in records] == [
        ("d0", "First text here.", {"title": "One", "n": 1}),
        ("d1", "Second text.", {"title": "Two", "n": 2}),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # reading writes nothing
    with pytest.raises(CorpusError) as caught:
        read_corpus(path)
    assert str(caught.value) == (
        f"{path}: the dataset has no field 'text' (its fields: id, body, title, n): name the "
        "text field with --text-field (corpus.text_field)"
    )


def test_dataset_rows_without_ids_and_a_dataset_dict(tmp_path):
    data = datasets.Dataset.from_dict({"text": ["a text", "  "]})
    data.to_parquet(str(tmp_path / "d.parquet"))
    with pytest.raises(CorpusError, match=r"d.parquet: row 1: field 'text' is empty"):
        read_corpus(tmp_path / "d.parquet")
    data = datasets.Dataset.from_dict({"text": ["a text", "more"]})
    data.save_to_disk(str(tmp_path / "saved"))
    assert [r.id for r in read_corpus(tmp_path / "saved")] == ["row-0", "row-1"]
    datasets.DatasetDict({"train": data, "test": data}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(CorpusError, match=r"holds the splits train, test: give the folder of one"):
        read_corpus(tmp_path / "dict")
    (tmp_path / "latin1.csv").write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.csv: cannot be read as a dataset \(not UTF-8"):
        read_corpus(tmp_path / "latin1.csv")


def test_without_the_datasets_package_the_error_says_what_to_install(tmp_path, monkeypatch):
    _dataset().to_parquet(str(tmp_path / "d.parquet"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(CorpusError) as caught:
        read_corpus(tmp_path / "d.parquet", text_field="body")
    assert str(caught.value) == (
        f"{tmp_path / 'd.parquet'}: reading a Hugging Face dataset needs the datasets package: "
        "pip install 'elusive[datasets]'"
    )


def test_cli_text_field_reaches_the_reader(tmp_path):
    _dataset().to_parquet(str(tmp_path / "d.parquet"))
    out = tmp_path / "scores"
    args = ["attention", "--corpus", str(tmp_path / "d.parquet"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--model", "m", "--text-field", "nope"])
    assert result.exit_code == 2 and "has no field 'nope' (its fields: id, body" in result.output
    assert not out.exists()

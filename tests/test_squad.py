"""SQuAD v1.1-format paragraph corpora with closed-book QA (issue 7), on a hand-written fixture."""

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elusive.cli import app
from elusive.corpus.records import read_corpus, read_qa, write_corpus_and_qa
from elusive.corpus.squad import SquadConfig, read_squad
from elusive.io import CorpusError, DroppedDataWarning
from elusive.metrics import aggregate, best_scores, exact_match, f1_score

FIXTURE = Path(__file__).parent / "data" / "squad_small.json"
RAW = json.loads(FIXTURE.read_text(encoding="utf-8"))


def write(tmp_path, data, name="squad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_reader_on_fixture():
    records, questions = read_squad(FIXTURE)
    assert [r.id for r in records] == [
        "Lake_Varren-p0",
        "Lake_Varren-p1",
        "Orsolya_Kádár-p0",
        "Tidewater_Line-p0",
        "Kethara-p0",
    ]
    assert records[2].meta == {"title": "Orsolya Kádár"}
    assert records[0].text == RAW["data"][0]["paragraphs"][0]["context"]
    assert len(questions) == 13 and len({q.id for q in questions}) == 13
    by_id = {q.id: q for q in questions}
    assert by_id["varren-1"].answers == ("112 metres", "112")  # the repeated gold answer merged
    assert by_id["kethara-2"].answers == ("a feather quill", "feather quill", "quill")
    assert by_id["kadar-1"].source_id == "Orsolya_Kádár-p0"
    texts = {r.id: r for r in records}
    for q in questions:
        record = texts[q.source_id]
        start, end = record.spans[q.id]
        assert record.text[start:end] == q.answers[0]
        assert all(a in record.text for a in q.answers)


def test_subsampling_is_seeded_ordered_and_nested():
    def sample(**kw):
        return read_squad(FIXTURE, SquadConfig(**kw))

    records, questions = sample(max_paragraphs=2, seed=3)
    assert sample(max_paragraphs=2, seed=3) == (records, questions)
    ids = [r.id for r in records]
    everything = [r.id for r in read_squad(FIXTURE)[0]]
    assert len(ids) == 2 and ids == [i for i in everything if i in ids]  # file order kept
    assert {q.source_id for q in questions} <= set(ids)
    bigger = [r.id for r in sample(max_paragraphs=3, seed=3)[0]]
    assert set(ids) < set(bigger)
    seeds = {tuple(r.id for r in sample(max_paragraphs=2, seed=s)[0]) for s in range(8)}
    assert len(seeds) > 1

    records, questions = sample(max_questions=4, seed=1)
    assert len(records) == 5 and len(questions) == 4
    kept = {q.id for q in questions}
    assert {k for r in records for k in r.spans} == kept  # spans only for kept questions
    assert kept < {q.id for q in sample(max_questions=6, seed=1)[1]}


def test_config_limits_must_be_positive():
    with pytest.raises(CorpusError, match="--max-paragraphs must be at least 1, got 0"):
        read_squad(FIXTURE, SquadConfig(max_paragraphs=0))
    with pytest.raises(CorpusError, match="--max-questions must be at least 1, got -2"):
        read_squad(FIXTURE, SquadConfig(max_questions=-2))


def unanswerable_data():
    data = copy.deepcopy(RAW)
    qas = data["data"][3]["paragraphs"][0]["qas"]  # Kethara
    qas.append({"id": "x-none", "question": "Who built it?", "answers": []})
    qas.append({"id": "x-out", "question": "Its price?", "answers": [{"text": "ten crowns"}]})
    qas.append(
        {
            "id": "x-mixed",
            "question": "How many strings?",
            "answers": [{"text": "five"}, {"text": "four strings"}],
        }
    )
    return data


def test_drop_questions_whose_answer_is_not_in_the_paragraph(tmp_path):
    path = write(tmp_path, unanswerable_data())
    records, questions = read_squad(path)
    by_id = {q.id: q for q in questions}
    assert "x-none" not in by_id and "x-out" not in by_id
    assert by_id["x-mixed"].answers == ("four strings",)  # located by search, no answer_start
    kethara = records[-1]
    start, end = kethara.spans["x-mixed"]
    assert kethara.text[start:end] == "four strings"

    with pytest.raises(CorpusError, match=r"question 'x-none' \(paragraph 'Kethara-p0'\) has no"):
        read_squad(path, SquadConfig(require_answer_in_context=False))
    data = unanswerable_data()
    data["data"][3]["paragraphs"][0]["qas"].pop(-3)
    questions = read_squad(write(tmp_path, data), SquadConfig(require_answer_in_context=False))[1]
    by_id = {q.id: q for q in questions}
    assert by_id["x-out"].answers == ("ten crowns",)
    assert by_id["x-mixed"].answers == ("five", "four strings")


def test_no_question_left_is_an_error(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "Some text.", "qas": []}]}]}
    with pytest.raises(CorpusError, match="no questions left$"):
        read_squad(write(tmp_path, data))
    data["data"][0]["paragraphs"][0]["qas"] = [
        {"id": "a", "question": "Q?", "answers": [{"text": "elsewhere"}]}
    ]
    with pytest.raises(CorpusError, match=r"no questions left \(1 dropped"):
        read_squad(write(tmp_path, data))


def _v2_data(impossible_ids):
    """A SQuAD v2.0 paragraph of three questions; those in `impossible_ids` are unanswerable."""
    context = "The Varren bell was cast in 1821 and rings twelve times at noon."
    qas = []
    for qid, question, answer in [
        ("a", "When was the bell cast?", "1821"),
        ("b", "How often does it ring at noon?", "twelve times"),
        ("c", "Who cast the bell?", "Varren"),
    ]:
        qa = {"id": qid, "question": question, "is_impossible": qid in impossible_ids}
        qa["answers"] = [] if qid in impossible_ids else [{"text": answer}]
        qas.append(qa)
    return {"version": "v2.0", "data": [{"title": "Bell", "paragraphs": [
        {"context": context, "qas": qas}]}]}  # fmt: skip


def test_squad_v2_impossible_questions_are_counted(tmp_path):
    path = write(tmp_path, _v2_data({"b", "c"}))
    with pytest.warns(DroppedDataWarning, match="skipped 2 marked is_impossible"):
        _, questions = read_squad(path)
    assert [q.id for q in questions] == ["a"]
    result = runner.invoke(app, ["squad", "convert", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "skipped 2 marked is_impossible" in result.output
    assert "1 questions" in result.output

    every = write(tmp_path, _v2_data({"a", "b", "c"}), "all.json")
    with pytest.raises(CorpusError, match=r"no questions left \(3 marked is_impossible") as err:
        read_squad(every)
    assert "no answer in the paragraph" not in str(err.value)
    data = _v2_data(set())
    data["data"][0]["paragraphs"][0]["qas"][0]["is_impossible"] = "no"
    with pytest.raises(CorpusError, match="question 'a' .*'is_impossible' must be true or false"):
        read_squad(write(tmp_path, data, "bad.json"))


def test_ids_number_paragraphs_per_title(tmp_path):
    qa = [{"id": "q", "question": "Q?", "answers": [{"text": "b", "answer_start": 2}]}]
    data = {
        "data": [
            {"title": "New  York", "paragraphs": [{"context": "a b", "qas": qa}]},
            {"title": "Other", "paragraphs": [{"context": "c", "qas": []}]},
            {"title": "New York", "paragraphs": [{"context": "d", "qas": []}]},
        ]
    }
    records, questions = read_squad(write(tmp_path, data))
    assert [r.id for r in records] == ["New_York-p0", "Other-p0", "New_York-p1"]
    assert questions[0].source_id == "New_York-p0" and records[0].spans == {"q": (2, 3)}


def test_multi_answer_scoring_takes_the_best_gold():
    by_id = {q.id: q for q in read_squad(FIXTURE)[1]}
    golds = by_id["varren-2"].answers  # the Sollen River / Sollen River / Sollen
    assert best_scores("Sollen", golds) == (1.0, 1.0)
    assert best_scores("the river Sollen", golds) == (0.0, 1.0)  # same words, other order
    golds = by_id["kadar-3"].answers
    em, f1 = best_scores("Austrian Society", golds)
    assert em == 0.0 and f1 == pytest.approx(0.8)  # P = 1, R = 2/3
    # The best over golds is the max of the single-gold scores (slow reference).
    for prediction in ("quill", "a quill pen", "feather", "fingers"):
        golds = by_id["kethara-2"].answers
        assert best_scores(prediction, golds) == (
            max(exact_match(prediction, g) for g in golds),
            max(f1_score(prediction, g) for g in golds),
        )
    rows = [
        dict(zip(("field", "em", "f1"), ("all", *best_scores(p, by_id[i].answers)), strict=True))
        for i, p in [("varren-1", "112"), ("kadar-1", "Graz")]
    ]
    overall = aggregate(rows)["overall"]
    assert (overall.em, overall.f1, overall.n) == (0.5, 0.5, 2)


def mutate(path_in_data, action):
    """A copy of the fixture with one node deleted (action None) or replaced."""

    def build():
        data = copy.deepcopy(RAW)
        node = data
        for key in path_in_data[:-1]:
            node = node[key]
        if action is None:
            del node[path_in_data[-1]]
        else:
            node[path_in_data[-1]] = action
        return data

    return build


P0 = ("data", 0, "paragraphs", 0)
KADAR = ("data", 1, "paragraphs", 0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: [], r"top level: expected a JSON object, got a list"),
        (lambda: {"version": "1.1"}, r"top level: missing field 'data'"),
        (lambda: {"data": []}, r"squad.json: no paragraphs"),
        (mutate(("data", 1, "title"), None), r"data\[1\]: missing field 'title'"),
        (mutate(("data", 1, "title"), " "), r"data\[1\]: field 'title' is empty"),
        (mutate(("data", 2, "paragraphs"), {}), r"data\[2\]: field 'paragraphs' must be a list"),
        (
            mutate(("data", 2, "paragraphs", 0, "context"), None),
            r"paragraph 'Tidewater_Line-p0' \(data\[2\]\.paragraphs\[0\]\): "
            r"missing field 'context'",
        ),
        (mutate((*P0, "context"), ""), r"'Lake_Varren-p0' .*: field 'context' is empty"),
        (mutate((*P0, "qas"), None), r"'Lake_Varren-p0' .*: missing field 'qas'"),
        (
            mutate((*KADAR, "qas", 1, "id"), None),
            r"data\[1\]\.paragraphs\[0\]\.qas\[1\] \(paragraph 'Orsolya_Kádár-p0'\): "
            r"missing field 'id'",
        ),
        (
            mutate((*KADAR, "qas", 0, "question"), None),
            r"question 'kadar-1' \(paragraph 'Orsolya_Kádár-p0'\): missing field 'question'",
        ),
        (mutate((*KADAR, "qas", 0, "answers"), None), r"'kadar-1' .*: missing field 'answers'"),
        (
            mutate((*KADAR, "qas", 2, "answers", 1, "text"), None),
            r"question 'kadar-3' \(paragraph 'Orsolya_Kádár-p0'\), answer 1: missing field 'text'",
        ),
        (
            mutate((*P0, "qas", 1, "answers", 1, "answer_start"), 10),
            r"question 'varren-2' \(paragraph 'Lake_Varren-p0'\), answer 1: answer_start 10 "
            r"gives 'n is a fresh', not the answer text 'Sollen River'",
        ),
        (
            mutate((*P0, "qas", 2, "answers", 0, "answer_start"), 5000),
            r"'varren-3' .*answer 0: answer_start 5000 gives '', not the answer text '1968'",
        ),
        (
            mutate((*P0, "qas", 2, "answers", 0, "answer_start"), -1),
            r"'varren-3' .*answer 0: answer_start -1 gives ''",
        ),
        (
            mutate((*P0, "qas", 2, "answers", 0, "answer_start"), "293"),
            r"'varren-3' .*answer 0: field 'answer_start' must be an integer, got a string",
        ),
        (
            mutate((*P0, "qas", 2, "answers", 0), "1968"),
            r"'varren-3' .*answer 0: expected a JSON object, got a string",
        ),
        (
            mutate(("data", 2, "paragraphs", 0, "qas", 0, "id"), "kadar-1"),
            r"question id 'kadar-1' in paragraph 'Tidewater_Line-p0' repeats one in paragraph "
            r"'Orsolya_Kádár-p0'",
        ),
    ],
)
def test_malformed_input_names_the_paragraph_or_question(tmp_path, build, message):
    with pytest.raises(CorpusError, match=message):
        read_squad(write(tmp_path, build()))


def test_bad_json_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}\n')
    with pytest.raises(CorpusError, match=r"broken\.json:3:19: invalid JSON \(Expecting value\)"):
        read_squad(path)
    with pytest.raises(CorpusError, match=r"nope\.json: no such file"):
        read_squad(tmp_path / "nope.json")


def test_written_files_read_back_and_are_deterministic(tmp_path):
    records, questions = read_squad(FIXTURE, SquadConfig(max_questions=7, seed=2))
    corpus, qa = write_corpus_and_qa(records, questions, tmp_path / "a")
    assert read_corpus(corpus) == records
    assert read_qa(qa) == questions
    again = write_corpus_and_qa(
        *read_squad(FIXTURE, SquadConfig(max_questions=7, seed=2)), tmp_path / "b"
    )
    assert [p.read_bytes() for p in again] == [corpus.read_bytes(), qa.read_bytes()]


def test_read_qa_plain_jsonl(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"id": "a", "source_id": "doc-1", "question": "Q1?", "answers": ["x", "the x"]},
        {"source_id": "doc-2", "question": "Q2?", "answer": "y", "field": "date"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_qa(path)
    assert (first.id, first.source_id, first.answers, first.field) == (
        "a",
        "doc-1",
        ("x", "the x"),
        "all",
    )
    assert (second.id, second.source_id, second.answers, second.field) == (
        "q2",
        "doc-2",
        ("y",),
        "date",
    )
    for bad, message in [
        ({"question": "Q?", "answers": ["ok", " "]}, r"qa.jsonl:2: field 'answers' must be"),
        ({"question": "Q?", "answer": ""}, r"qa.jsonl:2: missing field 'answer'"),
        ({"id": "a", "question": "Q?", "answer": "z"}, r"qa.jsonl:2: duplicate question id 'a'"),
    ]:
        path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(CorpusError, match=message):
            read_qa(path)


runner = CliRunner()


def test_cli_convert(tmp_path):
    out = tmp_path / "out"
    args = ["squad", "convert", str(FIXTURE), "--out", str(out), "--max-paragraphs", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 paragraphs" in result.output
    assert len(read_corpus(out / "corpus.jsonl")) == 3
    sources = {q.source_id for q in read_qa(out / "qa.jsonl")}
    assert sources <= {r.id for r in read_corpus(out / "corpus.jsonl")}


def test_cli_bad_input_is_one_line_error_and_writes_nothing(tmp_path):
    bad = write(tmp_path, mutate((*P0, "qas", 1, "answers", 0, "answer_start"), 3)())
    out = tmp_path / "out"
    result = runner.invoke(app, ["squad", "convert", str(bad), "--out", str(out)])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "question 'varren-2' (paragraph 'Lake_Varren-p0'), answer 0: answer_start 3" in lines[0]
    assert not out.exists()
    result = runner.invoke(
        app, ["squad", "convert", str(FIXTURE), "--out", str(out), "--max-questions", "0"]
    )
    assert result.exit_code != 0 and "--max-questions must be at least 1" in result.output
    assert not out.exists()

"""Documents cut into passages (elusive.corpus.chunking), checked against slow references: each
passage tokenized again the way training tokenizes it, the document rebuilt from its passages."""

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elusive.corpus.chunking import ChunkError, chunk_record, chunk_records, sentence_starts
from elusive.corpus.records import Record, markdown_headings
from elusive.models import load_tokenizer
from elusive.training.train import tokenize_texts

WORDS = (
    "the a of knowledge model Paris 1970 kg well-known e.g. Dr. naïve café Zürich 東京 "
    "señor Ω ∑ 🙂 x antidisestablishmentarianism supercalifragilisticexpialidocious"
).split()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def training_length(tokenizer, text: str) -> int:
    """The slow reference: the sequence `elusive.training.train` trains on, uncut."""
    return len(tokenize_texts([text], tokenizer, None)[0])


def generate(seed: int, tokens: int, markdown: bool) -> tuple[str, dict[str, tuple[int, int]]]:
    """A document of about `tokens` words: paragraphs of sentences with odd whitespace, long
    words, non-ASCII text, Markdown headings and code fences, and spans over some words."""
    rng = random.Random(seed)
    parts: list[str] = []
    spans: dict[str, tuple[int, int]] = {}
    length = 0

    def add(piece: str, span: str | None = None) -> None:
        nonlocal length
        if span is not None:
            spans[span] = (length, length + len(piece))
        parts.append(piece)
        length += len(piece)

    words = 0
    while words < tokens:
        if markdown and rng.random() < 0.2:
            add("#" * rng.randint(1, 3) + " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 4))))
            add(rng.choice(["\n\n", "\n", "\n\n\n"]))
        if markdown and rng.random() < 0.05:
            add("```\n# not a heading\nx = 1\n\n\ny = 2\n```\n\n")
        for _ in range(rng.randint(1, 12)):  # sentences
            n = rng.choice([1, 3, 8, 15, 40, 120]) if rng.random() < 0.3 else rng.randint(2, 12)
            for k in range(n):
                if rng.random() < 0.08:  # a span of one to three words
                    add(" ".join(rng.choices(WORDS, k=rng.randint(1, 3))), f"s{len(spans)}")
                else:
                    add(rng.choice(WORDS))
                if k < n - 1:
                    add(rng.choice([" ", " ", " ", "  ", "\t", "\n", ", "]))
            words += n
            add(rng.choice([".", "!", "?", "...", ""]))
            add(rng.choice([" ", "  ", "\n", " "]))
        if rng.random() < 0.03:
            add("".join(rng.choices("abcdefghij", k=rng.randint(50, 400))))  # no spaces at all
        add(rng.choice(["\n\n", "\n\n\n", "\n \n", "\n\t\n  "]))
    text = "".join(parts)
    if rng.random() < 0.5:
        text = text.rstrip()  # readers strip; JSONL texts may end with whitespace
    spans = {k: v for k, v in spans.items() if v[1] <= len(text)}
    if spans and rng.random() < 0.3:  # a span overlapping another
        key, (a, b) = rng.choice(sorted(spans.items()))
        spans["overlap"] = (max(0, a - 2), min(len(text), b + 3))
    return text, spans


def short_spans(tokenizer, text: str, spans: dict, max_tokens: int) -> dict:
    """The spans of a generated text that leave room around them: a third of a passage."""
    return {
        key: (a, b)
        for key, (a, b) in spans.items()
        if training_length(tokenizer, text[a : b + 3]) <= max_tokens // 3
    }


def check_passages(document: Record, passages: list[Record], tokenizer, max_tokens: int) -> None:
    """The contract of elusive.corpus.chunking, checked passage by passage."""
    assert "".join(p.text for p in passages) == document.text  # nothing lost or reordered
    position = 0
    for k, passage in enumerate(passages):
        assert passage.id == f"{document.id}#{k}"
        meta = passage.meta
        assert (meta["doc_id"], meta["start"], meta["end"]) == (
            document.id,
            position,
            position + len(passage.text),
        )
        position = meta["end"]
        assert passage.text.strip(), "a whitespace-only passage"
        assert training_length(tokenizer, passage.text) <= max_tokens
        for key, (a, b) in passage.spans.items():
            start, end = document.spans[key]
            assert (a + meta["start"], b + meta["start"]) == (start, end)
            assert passage.text[a:b] == document.text[start:end]
    owners = [key for p in passages for key in p.spans]
    assert sorted(owners) == sorted(document.spans)  # each span in exactly one passage


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    max_tokens=st.sampled_from([24, 40, 64, 128]),
    contexts=st.floats(0.2, 50),
    markdown=st.booleans(),
)
def test_passages_rebuild_the_document_fit_the_limit_and_keep_spans(
    tokenizer, seed, max_tokens, contexts, markdown
):
    text, spans = generate(seed, int(contexts * max_tokens / 2), markdown)
    spans = short_spans(tokenizer, text, spans, max_tokens)
    meta = {"source": "doc.md" if markdown else "doc.txt", "title": "Doc"}
    document = Record("doc", text, spans=spans, meta=meta)
    passages = chunk_record(document, tokenizer, max_tokens)
    check_passages(document, passages, tokenizer, max_tokens)
    assert chunk_record(document, tokenizer, max_tokens) == passages  # deterministic


def test_a_document_fifty_times_the_context(tokenizer):
    text, spans = generate(7, 50 * 64, markdown=True)
    spans = short_spans(tokenizer, text, spans, 64)
    document = Record("long", text, spans=spans, meta={"source": "long.md"})
    assert training_length(tokenizer, text) > 50 * 64
    passages = chunk_record(document, tokenizer, 64)
    check_passages(document, passages, tokenizer, 64)
    # the passages are full: no two neighbours would fit in one
    assert len(passages) < 2 * training_length(tokenizer, text) / 64


def _cuts(passages: list[Record]) -> list[int]:
    return [p.meta["end"] for p in passages[:-1]]


def test_cuts_are_at_paragraphs_when_paragraphs_fit_and_as_late_as_fits(tokenizer):
    paragraphs = [f"Paragraph {k} holds a few words about item {k}." for k in range(40)]
    text = "\n\n".join(paragraphs)
    passages = chunk_record(Record("d", text), tokenizer, 48)
    breaks = {m.end() for m in re.finditer(r"\n\n", text)}
    assert len(passages) > 3 and set(_cuts(passages)) <= breaks
    for passage, after in zip(passages, passages[1:], strict=False):
        # one more paragraph would not have fitted
        grown = text[passage.meta["start"] : text.find("\n\n", after.meta["start"]) + 2]
        if after is not passages[-1]:
            assert training_length(tokenizer, grown) > 48


def test_a_paragraph_too_long_is_cut_at_sentences_then_words_then_tokens(tokenizer):
    sentences = " ".join(f"Sentence {k} is short." for k in range(30))
    passages = chunk_record(Record("d", sentences), tokenizer, 24)
    starts = set(sentence_starts(sentences))
    assert len(passages) > 3 and set(_cuts(passages)) <= starts
    assert all(p.text.endswith(". ") for p in passages[:-1])  # the space ends the earlier one
    words = " ".join(["word"] * 200)  # one sentence, no punctuation
    passages = chunk_record(Record("w", words), tokenizer, 24)
    assert all(p.text.endswith(" ") and p.text.strip() for p in passages[:-1])
    check_passages(Record("w", words), passages, tokenizer, 24)
    letters = "".join(random.Random(0).choices("abcdefghijklmnop", k=2000))  # no spaces
    passages = chunk_record(Record("t", letters), tokenizer, 24)
    assert len(passages) > 5
    check_passages(Record("t", letters), passages, tokenizer, 24)


def test_markdown_headings_start_passages_and_title_them(tokenizer):
    body = " ".join(f"Fact {k} is here." for k in range(12))
    text = f"# Guide\n\n## Install\n\n{body}\n\n## Use\n\nShort.\n\n### Tips\n\n{body}"
    document = Record("g.md", text, meta={"source": "wiki/g.md", "title": "Guide"})
    passages = chunk_record(document, tokenizer, 40)
    check_passages(document, passages, tokenizer, 40)
    headings = {h.start: h.title for h in markdown_headings(text)}
    cuts = _cuts(passages)
    for start, title in headings.items():
        if title not in ("Guide", "Install"):  # those two only have each other above the text
            assert start in cuts
    assert passages[0].text.startswith("# Guide\n\n## Install\n\nFact 0")  # headings stay on
    titles = [p.meta["title"] for p in passages]
    under = {
        p.meta["title"] for p in passages if "Fact" in p.text and p.meta["start"] < len(text) // 2
    }
    assert under == {"Install"} and titles[-1] == "Tips"
    assert [p.meta["title"] for p in passages if p.text.startswith("## Use")] == ["Use"]
    # a plain-text record is no Markdown: its "#" lines are text, the document title stays
    plain = chunk_record(Record("p", text, meta={"title": "Guide"}), tokenizer, 40)
    assert {p.meta["title"] for p in plain} == {"Guide"}


def test_a_span_is_never_cut_and_one_too_long_is_an_error(tokenizer):
    text = "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi. " * 6
    start = text.index("gamma")
    span = (start, text.index("epsilon", start) + len("epsilon"))
    limit = 2 * training_length(tokenizer, text[slice(*span)])  # the span fills half a passage
    document = Record("r", text, spans={"date": span, "empty": (start, start)})
    passages = chunk_record(document, tokenizer, limit)
    check_passages(document, passages, tokenizer, limit)
    assert len(passages) > 3 and all(not span[0] < cut < span[1] for cut in _cuts(passages))
    (owner,) = [p for p in passages if "date" in p.spans]
    assert "empty" in owner.spans
    long_span = Record("r", text, spans={"name": (0, len(text) // 2)})
    with pytest.raises(ChunkError, match=r"text 'r': span 'name' is \d+ tokens long, more than"):
        chunk_record(long_span, tokenizer, limit)
    with pytest.raises(ChunkError, match="holds no text"):  # BOS and EOS fill it
        chunk_record(Record("r", text), tokenizer, training_length(tokenizer, ""))


def test_records_fitting_whole_become_one_passage_each(tokenizer):
    records = [
        Record("a", "A short text.", meta={"title": "A"}),
        Record("b", "Another one.", spans={"name": (0, 7)}),
    ]
    passages = chunk_records(records, tokenizer, 64)
    assert [(p.id, p.text, p.spans) for p in passages] == [
        ("a#0", "A short text.", {}),
        ("b#0", "Another one.", {"name": (0, 7)}),
    ]
    assert passages[0].meta == {"title": "A", "doc_id": "a", "start": 0, "end": 13}

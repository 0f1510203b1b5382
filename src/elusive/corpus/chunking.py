"""Documents cut into passages that fit a model (`corpus.chunk`; docs/corpus.md).

A document of any length becomes passages of at most `max_tokens` tokens, counted as training
counts a text (`sequence_length`: the tokenizer's special tokens, BOS where it adds one, plus
the text plus EOS), so that ``corpus.chunk <= train.max_length`` trains every passage whole.
Cuts are chosen, from the start of the document, as far on as the passage still fits:

1. at a paragraph boundary (after a blank line); in Markdown a heading also starts a new
   passage, unless the passage so far holds nothing but headings;
2. where no paragraph boundary fits, at a sentence boundary of the paragraph (pysbd);
3. where no sentence boundary fits (one sentence alone is too long), before a word, and
   where no word boundary fits either (a long word, text without spaces), at a token
   boundary.

The contract, which tests/test_chunking.py checks on generated texts:

- a cut is a character offset, and the whitespace between two passages ends the earlier one,
  so the passages' texts joined give back the document exactly; no passage is whitespace only;
- every passage's `sequence_length` is at most `max_tokens`;
- no cut falls inside a span (``start < cut < end``): each span lies inside one passage and
  moves there shifted to its offsets; a span longer than `max_tokens` is an error.

A passage of document ``doc`` has id ``doc#k`` (k from 0) and meta: the document's, plus
``doc_id``, ``start`` and ``end`` (its character offsets in the document) and, for Markdown,
``title``: the nearest heading above its first line of text (else the document's title).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elusive.corpus.records import Heading, Record, markdown_headings
from elusive.io import CorpusError

MARKDOWN_SUFFIXES = (".md", ".markdown")
"""A record whose ``meta["source"]`` ends so is Markdown: its headings start passages."""

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")  # a blank line and the whitespace after it
_SPACE = re.compile(r"\s*")


class ChunkError(CorpusError):
    """A document that cannot be cut to the limit: a span longer than a passage may be, or a
    limit too small for any text."""


def sequence_length(tokenizer: Any, text: str) -> int:
    """The tokens of `text` as one training sequence (`elusive.training.train.tokenize_texts`): the
    tokenizer's special tokens, the text's tokens and EOS."""
    return sequence_lengths(tokenizer, [text])[0]


def sequence_lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """`sequence_length` of each of `texts`, tokenized as one batch."""
    if not texts:
        return []
    eos = 1 if tokenizer.eos_token_id is not None else 0
    ids = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    return [len(seq) + eos for seq in ids]


def chunk_records(records: Sequence[Record], tokenizer: Any, max_tokens: int) -> list[Record]:
    """Every record cut into passages of at most `max_tokens` tokens (see the module doc), in
    order: ``doc#0, doc#1, ..., next#0, ...``. A record that fits whole is one passage."""
    return [p for record in records for p in chunk_record(record, tokenizer, max_tokens)]


def chunk_record(record: Record, tokenizer: Any, max_tokens: int) -> list[Record]:
    """One record cut into passages (see `chunk_records`)."""
    headings = markdown_headings(record.text) if is_markdown(record) else []
    cuts = _Cutter(record, tokenizer, max_tokens, headings).cuts()
    passages = []
    for k, (start, end) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        last = end == len(record.text)
        spans = {
            key: (a - start, b - start)
            for key, (a, b) in record.spans.items()
            # an empty span on a cut belongs to the passage it starts
            if start <= a and b <= end and (a < end or (last and a == end))
        }
        meta = {**record.meta, "doc_id": record.id, "start": start, "end": end}
        title = _title(record.text, headings, start, end)
        if title is not None:
            meta["title"] = title
        passages.append(
            Record(id=f"{record.id}#{k}", text=record.text[start:end], spans=spans, meta=meta)
        )
    return passages


def is_markdown(record: Record) -> bool:
    """Whether `record` was read from a Markdown file (`elusive.corpus.records.read_corpus`)."""
    return Path(str(record.meta.get("source", ""))).suffix.lower() in MARKDOWN_SUFFIXES


def _body_start(text: str, headings: list[Heading], position: int) -> int:
    """The first character at or after `position` that is neither whitespace nor in a heading
    line (``len(text)`` if none)."""
    starts = [h.start for h in headings]
    while True:
        position = _SPACE.match(text, position).end()
        index = bisect.bisect_right(starts, position) - 1
        if index < 0 or position >= headings[index].end or position == len(text):
            return position
        position = headings[index].end


def _title(text: str, headings: list[Heading], start: int, end: int) -> str | None:
    """The text of the nearest heading above the first line of text of passage [start, end)
    (a passage of headings only: its last), None where there is no heading above."""
    body = _body_start(text, headings, start)
    limit = body if body < end else end - 1
    above = [h for h in headings if h.start <= limit]
    return above[-1].title if above else None


class _Cutter:
    """The cuts of one document: ``[0, c1, ..., len(text)]``.

    A candidate cut is checked by tokenizing the passage it closes. Which candidate to check
    first is estimated from one tokenization of the whole document (the tokens that start in
    the passage), so each passage costs a few tokenizations of at most `max_tokens` tokens."""

    def __init__(
        self, record: Record, tokenizer: Any, max_tokens: int, headings: list[Heading]
    ) -> None:
        self.record, self.text, self.tokenizer = record, record.text, tokenizer
        self.max_tokens, self.headings = max_tokens, headings
        text = record.text
        self.n = len(text)
        self.overhead = sequence_length(tokenizer, "")  # BOS and EOS around every passage
        if max_tokens <= self.overhead:
            raise ChunkError(
                f"a passage of at most {max_tokens} tokens holds no text: the special tokens "
                f"around each take {self.overhead}"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ChunkError("cutting texts into passages needs a fast (Rust) tokenizer")
        self.forbidden = _merge(sorted(s for s in record.spans.values() if s[1] - s[0] > 1))
        for key, (a, b) in record.spans.items():
            length = sequence_length(tokenizer, text[a:b]) if b > a else 0
            if length > max_tokens:
                raise ChunkError(
                    f"text {record.id!r}: span {key!r} is {length} tokens long, more than a "
                    f"passage may hold ({max_tokens}): raise corpus.chunk"
                )
        offsets = tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )["offset_mapping"]
        self.token_starts = sorted({a for a, b in offsets if b > a})  # for the estimate
        self.content_end = len(text.rstrip())
        breaks = {m.end() for m in _PARAGRAPH_BREAK.finditer(text)}
        self.heading_starts = [h.start for h in headings if h.start > 0]
        self.paragraphs = self._allowed(breaks | set(self.heading_starts))
        spans = {x for span in record.spans.values() for x in span}
        self.words = self._allowed({m.end() for m in re.finditer(r"\s+", text)})
        self.tokens = self._allowed(set(self.token_starts) | spans)
        self._sentences: dict[tuple[int, int], list[int]] = {}

    def _allowed(self, positions: set[int]) -> list[int]:
        """The positions a cut may take, sorted: outside every span's inside, and leaving text
        (not whitespace only) after them."""
        return sorted(p for p in positions if 0 < p < self.content_end and self._outside(p))

    def _outside(self, position: int) -> bool:
        index = bisect.bisect_right(self.forbidden, (position, self.n + 1)) - 1
        return index < 0 or not self.forbidden[index][0] < position < self.forbidden[index][1]

    def cuts(self) -> list[int]:
        cuts = [0]
        while cuts[-1] < self.n:
            cuts.append(self._next_cut(cuts[-1]))
        return cuts

    def _next_cut(self, start: int) -> int:
        """The furthest cut after `start` whose passage fits, at the coarsest level that has
        one: paragraph, sentence, word, token. Each candidate lies past the passage's first
        character of text (past its headings: a heading stays with the text under it), so that
        no passage is whitespace only; a passage of headings alone is the last resort."""
        body = _body_start(self.text, self.headings, start)
        stop = self._forced_stop(body)
        paragraphs = self._after(self.paragraphs, body, stop) + [stop]
        cut = self._furthest_fit(start, paragraphs)
        if cut is not None:
            return cut
        paragraph_end = paragraphs[0]
        sentences = self._after(self._sentence_starts(body, paragraph_end), body, paragraph_end)
        cut = self._furthest_fit(start, sentences)
        if cut is not None:
            return cut
        sentence_end = sentences[0] if sentences else paragraph_end
        words = self._after(self.words, body, sentence_end)
        cut = self._furthest_fit(start, words)
        if cut is not None:
            return cut
        word_end = words[0] if words else sentence_end
        cut = self._furthest_fit(start, self._after(self.tokens, body, word_end))
        if cut is not None:
            return cut
        first = _SPACE.match(self.text, start).end()
        cut = self._furthest_fit(start, self._after(self.tokens, first, body + 1))
        if cut is not None:
            return cut
        inside = [k for k, (a, b) in self.record.spans.items() if a < sentence_end and b > start]
        raise ChunkError(
            f"text {self.record.id!r}: no cut after character {start} leaves a passage of at "
            f"most {self.max_tokens} tokens"
            + (f" (spans {', '.join(map(repr, inside))} overlap there)" if inside else "")
        )

    def _forced_stop(self, body: int) -> int:
        """Where a passage whose text begins at `body` must end at the latest: in Markdown at
        the next heading, else at the document's end."""
        index = bisect.bisect_right(self.heading_starts, body)
        while index < len(self.heading_starts):
            heading = self.heading_starts[index]
            if heading < self.content_end and self._outside(heading):
                return heading
            index += 1
        return self.n

    @staticmethod
    def _after(positions: list[int], start: int, stop: int) -> list[int]:
        """The positions in (start, stop)."""
        return positions[
            bisect.bisect_right(positions, start) : bisect.bisect_left(positions, stop)
        ]

    def _sentence_starts(self, position: int, paragraph_end: int) -> list[int]:
        """The starts of the sentences (but the first) of the paragraph holding `position`,
        where a cut may go."""
        index = bisect.bisect_right(self.paragraphs, position) - 1
        begin = self.paragraphs[index] if index >= 0 else 0
        key = (begin, paragraph_end)
        if key not in self._sentences:
            self._sentences[key] = self._allowed(
                set(sentence_starts(self.text[begin:paragraph_end], begin))
            )
        return self._sentences[key]

    def _estimate(self, start: int, end: int) -> int:
        """About `sequence_length` of text[start:end]: the document's tokens that start there."""
        inside = bisect.bisect_left(self.token_starts, end)
        inside -= bisect.bisect_left(self.token_starts, start)
        return inside + self.overhead

    def _fits(self, start: int, end: int) -> bool:
        return sequence_length(self.tokenizer, self.text[start:end]) <= self.max_tokens

    def _furthest_fit(self, start: int, candidates: list[int]) -> int | None:
        """The last of `candidates` (sorted, all after `start`) whose passage fits, None if
        none does: the passage grows with the cut, so from the last the estimate lets through,
        backwards while it does not fit, forwards while the next one fits."""
        if not candidates:
            return None
        low, high = 0, len(candidates)  # the first candidate the estimate says is too long
        while low < high:
            middle = (low + high) // 2
            if self._estimate(start, candidates[middle]) <= self.max_tokens:
                low = middle + 1
            else:
                high = middle
        index = max(low - 1, 0)
        while index >= 0 and not self._fits(start, candidates[index]):
            index -= 1
        if index < 0:
            return None
        while index + 1 < len(candidates) and self._fits(start, candidates[index + 1]):
            index += 1
        return candidates[index]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping ``(start, end)`` spans (sorted) merged: where no cut may fall inside."""
    merged: list[tuple[int, int]] = []
    for a, b in spans:
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


_SEGMENTER: Any = None


def sentence_starts(text: str, offset: int = 0) -> list[int]:
    """Where each sentence of `text` but the first starts (plus `offset`), by pysbd's English
    rules: after the whitespace that ends the sentence before."""
    global _SEGMENTER
    if _SEGMENTER is None:  # building the segmenter compiles its rules once
        import pysbd

        _SEGMENTER = pysbd.Segmenter(language="en", clean=False)
    starts, position = [], 0
    for sentence in _SEGMENTER.segment(text):
        found = text.find(sentence.strip(), position) if sentence.strip() else -1
        if found < 0:  # pysbd changed the sentence: leave no cut there
            continue
        if found > 0:
            starts.append(found + offset)
        position = found + len(sentence.strip())
    return starts

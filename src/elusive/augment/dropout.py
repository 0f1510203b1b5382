"""Token-dropout augmentation guided by attention scores (paper: "Method: Augmentation From
Contrasting Attention", Figure 4).

Every policy turns one text into ``copies + 1`` sequences: copy 0 is the original, copies
1..K drop tokens of the trained model's tokenization (the tokens of the scores file); a copy
left with no text is not written (see `augment`). Policies:

- ``none``: plain finetuning; every copy is the original, so all policies train on the same
  number of sequences (step-matched).
- ``plain``: plain finetuning as the paper's baseline ran: the original alone, once per epoch,
  whatever ``copies`` (so it trains on 1 / (copies + 1) of the sequences the others see).
- ``random``: each eligible token is dropped independently with probability ``alpha``, as in
  the paper ("randomly deletes each token independently with a probability alpha"). The
  authors' code drops with ``1 - alpha`` instead: ``random_drop: 1-alpha`` replays it.
- ``attention``: rank eligible tokens by one model's own attention (``score_of``), rank 0 =
  highest; a token of rank r is dropped with ``p(r) = alpha * (1 - exp(-beta * r))`` (Eq. 1).
- ``contrast``: the same p(r), ranked by ``large - small`` attention: the method.
- ``authors``: the ranking of the authors' released code replayed, with their p(r): the
  contrast of a scores folder made with ``attention.score: authors`` (each model's attention
  rows summed and divided by i + 1 in bfloat16, i.e. bf16(1/(i+1)) up to rounding), ranked
  over all of a text's tokens as their ``np.argsort(...)[::-1]`` ranks them
  (`elusive.scoring.scores.authors_rank`); only eligible tokens are dropped, as for every policy.
- ``shuffled`` and ``position``: controls the paper lacks. The same p(r), ranked by a random
  permutation of the eligible tokens (one per text, seeded) or by token position (the first
  eligible token has rank 0); they tell whether the contrast ranking itself matters.

Ranks are computed from the scores (ties broken by position, except ``authors``), not read
from the ``rank`` field.
Ineligible tokens (BOS, special, punctuation- or whitespace-only, and with ``protect`` those
that overlap the named spans of their record, e.g. the person's name) are never dropped.

Dropping removes the token's characters from the text. A whitespace-only gap between two tokens
(tokenizers whose offsets leave out the leading space) belongs to the following token, so
removal leaves no double spaces; with byte-level BPE the leading space is already part of the
token. Other characters no token covers, and text after the last token, are always kept.
``drop_style`` chooses what a dropped token leaves: ``delete`` (nothing), ``space`` (one space
for the token with its leading whitespace) or ``spaces-per-char`` (the authors' code: a space
for every character, so the text keeps its length). A character that several tokens share (a
multi-byte character split into byte tokens) belongs to the first of them.

Sampling is deterministic per (seed, text id, copy) and vectorised over whole chunks of texts:
token t of copy k of a text is dropped when ``u < p`` for a counter-based uniform ``u`` =
splitmix64(key + (k << 32 | t) * golden), with ``key`` a hash of (seed, text id). So results
do not depend on corpus order or chunking, copy k is the same whatever the number of copies,
and every policy sees the same uniforms (common random numbers). The ``shuffled`` permutation
sorts the uniforms of draw 0, which no copy uses.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from elusive.augment.render import TokenView, render_html, render_png
from elusive.corpus.records import Record, read_corpus
from elusive.errors import ElusiveError, flag
from elusive.io import (
    DroppedDataWarning,
    atomic_write_text,
    check_apart,
    check_out_file,
    remove_temps_of,
    write_jsonl,
)
from elusive.options import AttentionError, check_finite, shorten
from elusive.scoring.scores import TextScores, authors_rank, read_manifest, read_scores

CHUNK = 1024
"""Texts sampled and rendered together."""

_SPACES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)
_GOLDEN, _MIX1, _MIX2 = (
    np.uint64(x) for x in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


class AugmentError(ElusiveError):
    """Bad augmentation input; the message names the option, file or text id."""


DROP_STYLES = ("delete", "space", "spaces-per-char")
RANDOM_DROPS = ("alpha", "1-alpha")


@dataclass
class AugmentConfig:
    """Options of the augmentation; defaults are the paper's (Table 2, 10 copies)."""

    policy: str = "contrast"
    """Dropout policy: none, random, attention, contrast (the method), shuffled or position."""
    alpha: float = 0.7
    """Maximum drop probability (random: the drop probability)."""
    beta: float = 0.03
    """How fast the drop probability rises with the rank."""
    copies: int = 10
    """Augmented copies per text, besides the original (copy 0)."""
    seed: int = 0
    """Seed of the drops and of the shuffled policy's permutation; the same seed gives the
    same bytes."""
    drop_style: str = "delete"
    """What a dropped token leaves in the text: delete (nothing), space (one space) or
    spaces-per-char (a space per character, the length kept: the authors' code)."""
    random_drop: str = "alpha"
    """The random policy's drop probability: alpha (the paper's text) or 1-alpha (the authors'
    code, which keeps each token with probability alpha)."""
    score_of: str | None = None
    """Role ranked by the `attention` policy; None: "small", or the only role scored."""
    protect: tuple[str, ...] = ()
    """Spans of each record (its `spans`, e.g. ``name`` in the biographies) whose tokens are never
    dropped: like punctuation, they leave the ranking, so the other tokens share the same p(r).
    A record without one of them is an error."""

    def validate(self, name: Callable[[str], str] = flag) -> None:
        """Raise AugmentError on a bad option, named by ``name(field)`` (see `elusive.errors`)."""
        check_finite(self, name, AugmentError)
        if self.policy not in POLICIES:
            raise AugmentError(
                f"{name('policy')} must be one of {', '.join(POLICIES)}, got {shorten(self.policy)}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise AugmentError(f"{name('alpha')} must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.beta < float("inf"):
            raise AugmentError(f"{name('beta')} must be a finite number >= 0, got {self.beta}")
        if self.copies < 0:
            raise AugmentError(f"{name('copies')} must be >= 0, got {self.copies}")
        for option, choices in (("drop_style", DROP_STYLES), ("random_drop", RANDOM_DROPS)):
            value = getattr(self, option)
            if value not in choices:
                raise AugmentError(
                    f"{name(option)} must be one of {', '.join(choices)}, got {shorten(value)}"
                )
        if self.seed < 0:
            raise AugmentError(f"{name('seed')} must be >= 0, got {self.seed}")
        if any(not span for span in self.protect):
            raise AugmentError(f"{name('protect')} names an empty span: {shorten(self.protect)}")


# --------------------------------------------------------------------------- randomness


def text_keys(seed: int, ids: Sequence[str]) -> np.ndarray:
    """One 64-bit key per text, a hash of (seed, text id): [texts] uint64."""
    digests = (hashlib.sha256(f"{seed}\x00{i}".encode()).digest()[:8] for i in ids)
    return np.array([int.from_bytes(d, "little") for d in digests], dtype=np.uint64)


def uniforms(keys: np.ndarray, index: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): u[d, t] depends only on (keys[t], index[t], draws[d]).

    keys [tokens] uint64, index [tokens] (token position in its text), draws [d] -> [d, tokens].
    """
    counter = (draws.astype(np.uint64)[:, None] << np.uint64(32)) | index.astype(np.uint64)
    z = keys[None, :] + counter * _GOLDEN  # [d, tokens], wraps mod 2**64
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --------------------------------------------------------------------------- drop probabilities


@dataclass
class _Tokens:
    """The tokens of several texts laid end to end."""

    ids: list[str]  # [texts]
    start: np.ndarray  # [texts + 1] index of each text's first token
    text_of: np.ndarray  # [tokens] index of the token's text
    local: np.ndarray  # [tokens] position of the token in its text
    eligible: np.ndarray  # [tokens] bool


def _tokens(rows: Sequence[TextScores]) -> _Tokens:
    counts = np.array([len(row.tokens) for row in rows], dtype=np.int64)  # [texts]
    for row, n in zip(rows, counts, strict=True):
        if len(row.offsets) != n or len(row.eligible) != n:
            raise AugmentError(f"text {row.id!r}: tokens, offsets and eligible differ in length")
    start = np.concatenate([[0], np.cumsum(counts)])
    text_of = np.repeat(np.arange(len(rows)), counts)
    eligible = np.fromiter(chain.from_iterable(r.eligible for r in rows), bool, count=start[-1])
    return _Tokens(
        [row.id for row in rows], start, text_of, np.arange(start[-1]) - start[text_of], eligible
    )


def resolve_role(roles: Sequence[str], score_of: str | None) -> str:
    """The role the `attention` policy ranks by: `score_of`, else small, else the only one."""
    if score_of is not None:
        return score_of
    if "small" in roles:
        return "small"
    if len(roles) == 1:
        return roles[0]
    raise AugmentError(
        f"--score-of is needed: the scores hold roles {', '.join(sorted(roles))}, none 'small'"
    )


# --------------------------------------------------------------------------- policies
#
# A policy is an entry of UNRANKED (each token's drop probability drawn directly) or of RANK_BY
# (what the policy ranks tokens by; the rank gives the drop probability, Eq. 1).


def _contrast_scores(row: TextScores, config: AugmentConfig) -> Sequence[float]:
    if row.contrast is None:
        raise AugmentError(
            f"text {row.id!r}: policy contrast needs scores of roles 'large' and 'small'; "
            f"the scores hold {', '.join(sorted(row.scores)) or 'none'}"
        )
    return row.contrast


def _attention_scores(row: TextScores, config: AugmentConfig) -> Sequence[float]:
    role = resolve_role(list(row.scores), config.score_of)
    if role not in row.scores:
        raise AugmentError(
            f"text {row.id!r}: policy attention needs scores of role {role!r}; the scores "
            f"hold {', '.join(sorted(row.scores)) or 'none'}"
        )
    return row.scores[role]


RankBy = Callable[[Sequence["TextScores"], _Tokens, AugmentConfig], np.ndarray]


def _by_scores(pick: Callable[[TextScores, AugmentConfig], Sequence[float]]) -> RankBy:
    """A ranking by the scores file: `pick` gives a text's scores, one per token."""

    def values(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
        lists = []
        for row in rows:
            scores = pick(row, config)
            if len(scores) != len(row.tokens):
                raise AugmentError(
                    f"text {row.id!r}: {len(scores)} scores for {len(row.tokens)} tokens"
                )
            lists.append(scores)
        values = np.fromiter(chain.from_iterable(lists), np.float64, count=tok.start[-1])
        bad = tok.eligible & ~np.isfinite(values)
        if bad.any():
            raise AugmentError(
                f"text {tok.ids[tok.text_of[bad.argmax()]]!r}: a score is not finite"
            )
        return values

    return values


def _shuffled(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
    """A random permutation per text: the order of draw 0's uniforms (no copy uses draw 0)."""
    keys = text_keys(config.seed, tok.ids)[tok.text_of]
    return uniforms(keys, tok.local, np.zeros(1, np.int64))[0]


def _position(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
    return -tok.local.astype(np.float64)


@dataclass(frozen=True)
class Unranked:
    """A policy that gives each token its drop probability directly."""

    drop: Callable[[_Tokens, AugmentConfig], np.ndarray]
    """[tokens] float drop probabilities."""
    caption: Callable[[AugmentConfig], str]
    """One line saying how it drops (Figure 4's legend)."""


UNRANKED: dict[str, Unranked] = {
    "none": Unranked(
        lambda tok, config: np.zeros(len(tok.eligible)),
        lambda config: "policy none: nothing is dropped",
    ),
    "plain": Unranked(
        lambda tok, config: np.zeros(len(tok.eligible)),
        lambda config: "policy plain: the original alone, once per epoch",
    ),
    "random": Unranked(
        lambda tok, config: np.where(tok.eligible, _random_rate(config), 0.0),
        lambda config: (
            f"policy random: every eligible token dropped with p = {_random_rate(config):g}"
        ),
    ),
}


_contrast = _by_scores(_contrast_scores)


def _authors(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
    """Minus the authors' rank of each token (`authors_rank`), so that ranking the eligible
    tokens by it keeps the authors' order among them."""
    contrast = _contrast(rows, tok, config)
    return -np.fromiter(
        chain.from_iterable(
            authors_rank(contrast[a:b]) for a, b in zip(tok.start[:-1], tok.start[1:], strict=True)
        ),
        np.float64,
        count=len(contrast),
    )


RANK_BY: dict[str, RankBy] = {
    "attention": _by_scores(_attention_scores),
    "contrast": _contrast,
    "authors": _authors,
    "shuffled": _shuffled,
    "position": _position,
}
"""Policies that drop by rank with p(r) = alpha * (1 - exp(-beta * r)), and what each ranks the
eligible tokens of a text by, higher = kept more: [tokens] float."""
POLICIES: tuple[str, ...] = (*UNRANKED, *RANK_BY)
PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "plain": (),
    "random": ("alpha",),
    **{policy: ("alpha", "beta") for policy in RANK_BY},
}
"""The grid parameters each policy takes (`elusive.experiment.runs.grid` expands only those)."""


def _random_rate(config: AugmentConfig) -> float:
    return config.alpha if config.random_drop == "alpha" else 1.0 - config.alpha


RANKED: tuple[str, ...] = tuple(RANK_BY)
NEEDS_SCORES: tuple[str, ...] = RANKED
"""The policies that need a scores folder (`elusive attention`: both models' attention, or the
authors' scorer's): those that rank tokens. The others (`UNRANKED`: none, plain, random) draw
from the trained model's tokens of each text alone (`elusive.scoring.attention.token_rows`)."""


def needs_scores(policies: Sequence[str]) -> bool:
    """Whether any of `policies` ranks tokens, so that a run of them scores its corpus."""
    return any(policy in NEEDS_SCORES for policy in policies)


def _ranks(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
    """Rank of each eligible token in its text, 0 = highest value, ties by position; -1 for
    ineligible tokens: [tokens] int."""
    values = RANK_BY[config.policy](rows, tok, config)
    order = np.lexsort((-values, ~tok.eligible, tok.text_of))  # by text, eligible first, best first
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values)) - tok.start[tok.text_of[order]]
    rank[~tok.eligible] = -1
    return rank


def rank_drop_probability(rank: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Eq. 1: p(r) = alpha * (1 - exp(-beta * r)); 0 where rank is -1 (never dropped)."""
    return np.where(rank >= 0, alpha * -np.expm1(-beta * np.maximum(rank, 0)), 0.0)


def _drop(rows: Sequence[TextScores], tok: _Tokens, config: AugmentConfig) -> np.ndarray:
    if config.policy in UNRANKED:
        return UNRANKED[config.policy].drop(tok, config)
    return rank_drop_probability(_ranks(rows, tok, config), config.alpha, config.beta)


def drop_probabilities(
    rows: Sequence[TextScores], config: AugmentConfig, records: Sequence[Record] = ()
) -> np.ndarray:
    """Drop probability of every token of `rows`, laid end to end, under `config.policy`;
    `records` (the texts of `rows`) are needed when `config.protect` names spans."""
    config.validate()
    return _drop(rows, _prepare(records, rows, config)[0], config)  # [tokens]


# --------------------------------------------------------------------------- text


@dataclass
class _Chars:
    """The characters of several texts laid end to end, each owned by the token whose drop
    removes it (-1: always kept)."""

    start: np.ndarray  # [texts + 1] index of each text's first character
    codes: np.ndarray  # [chars] uint32 code points
    owner: np.ndarray  # [chars] global token index, or -1
    lead: np.ndarray  # [chars] bool: first character of a token


def _offsets(records: Sequence[Record], rows: Sequence[TextScores], tok: _Tokens) -> np.ndarray:
    """The checked token offsets of `rows`: [tokens, 2] (start, end) in their own text."""
    flat = chain.from_iterable(chain.from_iterable(row.offsets for row in rows))
    offsets = np.fromiter(flat, np.int64, count=2 * tok.start[-1]).reshape(-1, 2)
    start, end = offsets[:, 0], offsets[:, 1]  # [tokens]
    size = np.array([len(r.text) for r in records], dtype=np.int64)[tok.text_of]
    previous = np.concatenate([[0], start[:-1]])
    previous[tok.start[:-1][np.diff(tok.start) > 0]] = 0  # a text's first token
    ok = (previous <= start) & (start <= end) & (end <= size)
    if not ok.all():
        t = int(np.argmin(ok))
        raise AugmentError(
            f"text {tok.ids[tok.text_of[t]]!r}: token {tok.local[t]} has offsets "
            f"[{start[t]}, {end[t]}], outside the text or out of order"
        )
    return offsets


def _protect(
    records: Sequence[Record], tok: _Tokens, offsets: np.ndarray, spans: Sequence[str]
) -> None:
    """Make the tokens that overlap the records' `spans` ineligible, in place."""
    begin, end = offsets[:, 0], offsets[:, 1]  # [tokens]
    for i, record in enumerate(records):
        a, b = tok.start[i], tok.start[i + 1]
        for span in spans:
            if span not in record.spans:
                known = ", ".join(record.spans) or "none"
                raise AugmentError(
                    f"text {record.id!r} has no span {span!r} to protect (its spans: {known})"
                )
            lo, hi = record.spans[span]
            tok.eligible[a:b] &= ~((begin[a:b] < hi) & (end[a:b] > lo))


def _prepare(
    records: Sequence[Record], rows: Sequence[TextScores], config: AugmentConfig
) -> tuple[_Tokens, np.ndarray | None]:
    """The tokens of `rows` with `config.protect` applied, and their checked offsets ([tokens, 2];
    None without `records`)."""
    tok = _tokens(rows)
    if not records:
        if config.protect:
            raise AugmentError("protect needs the records whose spans it names")
        return tok, None
    offsets = _offsets(records, rows, tok)
    _protect(records, tok, offsets, config.protect)
    return tok, offsets


def _chars(records: Sequence[Record], offsets: np.ndarray, tok: _Tokens) -> _Chars:
    text = "".join(r.text for r in records)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")  # [chars]
    start = np.concatenate([[0], np.cumsum([len(r.text) for r in records])])
    base = start[tok.text_of]  # [tokens]
    begin, end = offsets[:, 0] + base, offsets[:, 1] + base  # [tokens] global
    seen = np.maximum.accumulate(np.concatenate([[0], end]))[:-1]  # end of the tokens before
    previous = np.maximum(seen, base)
    begin = np.maximum(begin, previous)  # a shared character belongs to the first token
    end = np.maximum(end, begin)
    nonspace = np.concatenate([[0], np.cumsum(~np.isin(codes, _SPACES))])  # [chars + 1]
    gap_is_space = (begin > previous) & (nonspace[begin] == nonspace[previous])
    begin = np.where(gap_is_space, previous, begin)
    length = end - begin  # [tokens]
    owner = np.full(len(codes), -1, dtype=np.int64)
    within = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    owner[np.repeat(begin, length) + within] = np.repeat(np.arange(len(length)), length)
    lead = np.zeros(len(codes), dtype=bool)
    lead[begin[length > 0]] = True
    return _Chars(start, codes, owner, lead)


def _render(chars: _Chars, keep: np.ndarray, style: str) -> list[list[str]]:
    """The text of every (text, copy) from keep [copies, tokens] bool, dropped tokens left as
    `style` says (see `AugmentConfig.drop_style`): [texts][copies] str."""
    copies = len(keep)
    keep = np.concatenate([keep, np.ones((copies, 1), dtype=bool)], axis=1)  # owner -1: kept
    take = keep[:, chars.owner]  # [copies, chars]
    codes = np.broadcast_to(chars.codes, take.shape)
    if style != "delete":
        # space: the first character of a dropped token becomes a space, the rest goes;
        # spaces-per-char: every character of it does
        swap = ~take if style == "spaces-per-char" else chars.lead & ~take
        codes = np.where(swap, np.uint32(32), codes)
        take |= swap
    flat = str(np.ascontiguousarray(codes[take], "<u4").data, "utf-32-le", "surrogatepass")
    size = np.diff(chars.start)  # [texts]
    counts = np.zeros((copies, len(size)), dtype=np.int64)  # kept chars of each (copy, text)
    if size.any():
        full = size > 0
        counts[:, full] = np.add.reduceat(take, chars.start[:-1][full], axis=1, dtype=np.int64)
    ends = np.cumsum(counts.ravel()).reshape(counts.shape)  # `flat` is copy-major
    return [
        [flat[b - n : b] for b, n in zip(e, c, strict=True)]
        for e, c in zip(ends.T.tolist(), counts.T.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------- corpus


def _check(record: Record, row: TextScores | None) -> TextScores:
    """The scores of `record`, checked against its text."""
    if row is None:
        raise AugmentError(f"no scores for text {record.id!r}: score this corpus first")
    if row.text_sha256 != record.sha256:
        raise AugmentError(
            f"scores of text {record.id!r} belong to another text (text_sha256 "
            f"{row.text_sha256[:12]}... != corpus {record.sha256[:12]}...): score this corpus"
        )
    return row


def augment(
    records: Sequence[Record],
    scores: Sequence[TextScores],
    config: AugmentConfig,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Augmented rows for every record, ordered by record then copy (0 = the original).

    Each row is {"id": "<source>#<copy>", "source_id", "policy", "copy", "text", "keep"}, with
    `keep` one 0/1 per token of the scores. A copy whose drops leave no text (or only
    whitespace: alpha near 1 on a text with no punctuation) is left out, and a
    DroppedDataWarning counts those; the other copies keep their numbers, so the rows written
    depend on the seed alone. Raises AugmentError on bad options or on scores that do not
    belong to `records`, before any sampling.
    """
    from tqdm import tqdm

    config.validate()
    by_id = {row.id: row for row in scores}
    rows = [_check(record, by_id.get(record.id)) for record in records]
    chunks = []
    for a in range(0, len(records), CHUNK):
        part, part_rows = records[a : a + CHUNK], rows[a : a + CHUNK]
        tok, offsets = _prepare(part, part_rows, config)
        chunks.append((part, tok, _drop(part_rows, tok, config), offsets))
    draws = np.arange(1, (0 if config.policy == "plain" else config.copies) + 1)
    out: list[dict[str, Any]] = []
    emptied = 0
    bar = tqdm(
        total=len(records), desc=f"augment {config.policy}", unit="text", disable=not progress
    )
    for part, tok, p, offsets in chunks:
        u = uniforms(text_keys(config.seed, tok.ids)[tok.text_of], tok.local, draws)
        keep = np.concatenate([np.ones((1, len(p)), dtype=bool), u >= p])  # [copies+1, tokens]
        texts = _render(_chars(part, offsets, tok), keep, config.drop_style)
        masks = keep.astype(np.uint8)
        for i, record in enumerate(part):
            kept = masks[:, tok.start[i] : tok.start[i + 1]].tolist()
            copies = list(enumerate(zip(texts[i], kept, strict=True)))
            emptied += sum(1 for _, (text, _) in copies if not text.strip())
            out.extend(
                {
                    "id": f"{record.id}#{copy}",
                    "source_id": record.id,
                    "policy": config.policy,
                    "copy": copy,
                    "text": text,
                    "keep": mask,
                }
                for copy, (text, mask) in copies
                if text.strip()  # copy 0, the corpus text, is never empty
            )
        bar.update(len(part))
    bar.close()
    if emptied:
        warnings.warn(
            f"{emptied} of {len(records) * config.copies} augmented copies lost every token "
            f"(policy {config.policy}, alpha {config.alpha:g}) and are not written",
            DroppedDataWarning,
            stacklevel=2,
        )
    return out


def load_inputs(
    scores_dir: str | Path,
    corpus: str | Path | None,
    config: AugmentConfig,
    text_field: str = "text",
) -> tuple[list[Record], list[TextScores], AugmentConfig]:
    """Read a scores directory and its corpus (the manifest's, unless given; a relative path
    there is relative to the scores directory; `text_field` as in `read_corpus`).

    `score_of` defaults to the manifest's trained role when the scores hold it.
    """
    try:
        manifest, rows = read_manifest(scores_dir), read_scores(scores_dir)
    except AttentionError as exc:
        raise AugmentError(str(exc)) from None
    if corpus is None:
        named = manifest.get("corpus")
        if not named:
            raise AugmentError(f"{scores_dir}/manifest.json names no corpus: pass --corpus")
        corpus = Path(scores_dir) / named
        if not corpus.exists():
            raise AugmentError(
                f"{corpus}: no such file or folder (the corpus {scores_dir}/manifest.json "
                "names): pass --corpus"
            )
    if config.policy == "authors" and manifest.get("score") != "authors":
        raise AugmentError(
            f"{scores_dir}: policy authors ranks by the authors' scorer, and these scores are "
            f"{manifest.get('score', 'received')!r}: score with `elusive attention --score authors`"
        )
    trained = manifest.get("trained")
    if config.score_of is None and rows and trained in rows[0].scores:
        config = replace(config, score_of=trained)
    return read_corpus(corpus, text_field), rows, config


def augment_file(
    scores_dir: str | Path,
    out: str | Path,
    config: AugmentConfig,
    corpus: str | Path | None = None,
    progress: bool = False,
    text_field: str = "text",
) -> int:
    """Augment a corpus with its scores directory into JSONL `out`, atomically; returns rows.
    `out` must be none of the inputs; the temp files a killed earlier run left for it go."""
    config.validate()
    check_out_file(out)
    records, rows, config = load_inputs(scores_dir, corpus, config, text_field)
    if corpus is None:  # the manifest's, which load_inputs has read and found
        corpus = Path(scores_dir) / read_manifest(scores_dir)["corpus"]
    scores = {f"--scores {n}": Path(scores_dir, n) for n in ("scores.jsonl", "manifest.json")}
    check_apart([out], {"--corpus": corpus, **scores})
    augmented = augment(records, rows, config, progress=progress)
    remove_temps_of(out)
    write_jsonl(out, augmented)
    return len(augmented)


# --------------------------------------------------------------------------- Figure 4


def token_views(record: Record, row: TextScores | None, config: AugmentConfig) -> list[TokenView]:
    """The pieces of `record`'s text: each token (with the whitespace it removes) with its keep
    probability 1 - p, and the characters no token owns (never dropped)."""
    config.validate()
    rows = [_check(record, row)]
    tok, offsets = _prepare([record], rows, config)
    none = np.full(len(tok.eligible), -1)
    rank = _ranks(rows, tok, config) if config.policy in RANKED else none  # [tokens]
    p = _drop(rows, tok, config)  # [tokens]
    owner = _chars([record], offsets, tok).owner  # [chars]
    cuts = [0, *(np.flatnonzero(np.diff(owner) != 0) + 1).tolist(), len(owner)]
    views = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        t = int(owner[a])
        views.append(
            TokenView(record.text[a:b], 1.0, -1, False)
            if t < 0
            else TokenView(record.text[a:b], float(1 - p[t]), int(rank[t]), bool(tok.eligible[t]))
        )
    return views


def caption(config: AugmentConfig) -> str:
    """One line saying how `config.policy` drops tokens (Figure 4's legend)."""
    if config.policy in UNRANKED:
        line = UNRANKED[config.policy].caption(config)
    else:
        line = (
            f"policy {config.policy}: drop p(r) = {config.alpha:g} "
            f"(1 - exp(-{config.beta:g} r)), r = rank"
        )
    if config.protect and config.policy not in ("none", "plain"):
        line += f"; {', '.join(config.protect)} never dropped"
    return line


def show(
    text_id: str,
    scores_dir: str | Path,
    out_prefix: str | Path,
    config: AugmentConfig,
    corpus: str | Path | None = None,
    text_field: str = "text",
) -> tuple[Path, Path]:
    """Write `<prefix>.html` and `<prefix>.png`: text `text_id` coloured by keep probability."""
    config.validate()
    records, rows, config = load_inputs(scores_dir, corpus, config, text_field)
    record = next((r for r in records if r.id == text_id), None)
    if record is None:
        raise AugmentError(f"text {text_id!r} is not in the corpus")
    row = next((r for r in rows if r.id == text_id), None)
    views = token_views(record, row, config)
    title = f"{text_id}: keep probability per token ({config.policy})"
    prefix = Path(out_prefix)
    html_path = atomic_write_text(
        prefix.with_name(prefix.name + ".html"), render_html(views, title, caption(config))
    )
    png_path = render_png(views, title, caption(config), prefix.with_name(prefix.name + ".png"))
    return html_path, png_path

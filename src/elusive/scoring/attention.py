"""Attention each token receives, and its contrast between a large and a small model.

Paper: "Contrasting Attention of Large and Small Language Models". For a text of T tokens and
causal attention probabilities ``A[l, h, i, j]`` (layer, head, query, key), token j receives

    s_j = mean_{l,h} ( sum_{i>=j} A[l,h,i,j] / (T - j) )

the mean over layers and heads of the column mean over the queries that can see it. (Summing a
row instead gives exactly 1/(j+1) for every model, since causal softmax rows sum to 1.)
The contrast ``s(large) - s(small)`` ranks tokens for the token-dropout augmentation.

Memory stays bounded: a custom attention function (registered with transformers as
``"elusive"``) computes each layer's attention in blocks of queries and folds every block of
probabilities into a ``[batch, T]`` running sum before the next one, so no T x T map of any
layer is ever held whole. The same machinery gives one query's attention row
(:func:`query_attention`), the analysis behind the paper's Figures 2 and 3. On a GPU the column
sums come from a fused kernel instead (`elusive.scoring.kernels`: flash attention, then the
probabilities rebuilt on chip from its logsumexp), where the layer allows it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from elusive.corpus.records import Record, read_corpus
from elusive.io import (
    DroppedDataWarning,
    atomic_write_text,
    check_apart,
    check_out_dir,
    os_reason,
)
from elusive.options import ROLES, AttentionConfig, AttentionError
from elusive.parallel import Dist
from elusive.scoring import kernels
from elusive.scoring.scores import TextScores, rank_desc, write_scores

ATTN_IMPLEMENTATION = "elusive"
BLOCK_ELEMENTS = {"cpu": 1 << 22, "cuda": 1 << 27}
"""Attention probabilities per query block (float32), whatever the text length: 16 MiB on the
CPU (stays in cache), 512 MiB on a GPU (few blocks: kernel launches dominate small ones)."""
KERNEL_DEVICES = ("cuda",)
"""Device types whose column sums come from the fused kernel (`elusive.scoring.kernels`) where a
layer allows it; the tests add "cpu", where the kernel runs under Triton's interpreter."""


# --------------------------------------------------------------------------- reductions


class _Reduction:
    """Folds blocks of attention probabilities ``[batch, heads, block, k1]`` (the first k1 <= T
    keys: the rest are masked for the block) into a ``[batch, T]`` sum over layers, heads and
    (some) queries.

    A model dispatched over several devices runs each layer on its own: a block is reduced on
    its layer's device and only the ``[batch, k1]`` result moves to the total's device."""

    fused = False
    """Also takes a whole layer at once from the fused kernel (`fold`)."""

    def __init__(self, valid: torch.Tensor) -> None:
        self.valid = valid  # [batch, T] bool: real tokens, not padding
        self.total = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
        self.maps = 0  # layers x heads folded in so far

    @functools.cached_property
    def right_padded(self) -> bool:
        """Every sequence's real tokens come before its padding (if any)."""
        return bool((self.valid[:, 1:].int() <= self.valid[:, :-1].int()).all())

    def update(self, probs: torch.Tensor, q0: int) -> None:
        raise NotImplementedError

    def fold(self, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float):
        raise NotImplementedError

    def add(self, summed: torch.Tensor) -> None:
        """Add one block's ``[batch, k1]`` sum, from any device, to the first k1 keys."""
        self.total[:, : summed.shape[1]] += summed.to(self.total.device)


class _ColumnSum(_Reduction):
    """Sum of each key's column over all real queries."""

    fused = True

    def update(self, probs: torch.Tensor, q0: int) -> None:
        self.maps += probs.shape[1] if q0 == 0 else 0
        weights = self.valid[:, q0 : q0 + probs.shape[2]].to(probs.device, torch.float32)
        per_query = probs.sum(dim=1)  # [batch, block, k1]: heads first, no copy of probs
        self.add(torch.bmm(weights[:, None], per_query)[:, 0])

    def fold(self, query: torch.Tensor, key: torch.Tensor, lse: torch.Tensor, scale: float):
        """A whole layer from its queries, keys and row logsumexps ``[batch, heads, T]``."""
        self.maps += query.shape[1]
        weights = self.valid.to(query.device, torch.float32)
        self.add(kernels.column_sums(query, key, lse, weights, scale))


class _QueryRow(_Reduction):
    """The row of one query position per sequence."""

    def __init__(self, valid: torch.Tensor, query: torch.Tensor) -> None:
        super().__init__(valid)
        self.query = query  # [batch] position of the query token

    def update(self, probs: torch.Tensor, q0: int) -> None:
        self.maps += probs.shape[1] if q0 == 0 else 0
        local = self.query.to(probs.device) - q0  # [batch]
        inside = (local >= 0) & (local < probs.shape[2])
        rows = probs[
            torch.arange(len(local), device=local.device), :, local.clamp(0, probs.shape[2] - 1)
        ]  # [b, h, k]
        self.add(rows.sum(1) * inside[:, None])


class _RowSumsBf16(_Reduction):
    """The authors' released scorer (see `authors_scores`): the mean map over layers and heads
    of the probabilities each rounded to bfloat16, as their eager bf16 attention returns them;
    the whole ``[batch, T, T]`` map is held (texts are short: this replays, it does not scale)."""

    def __init__(self, valid: torch.Tensor) -> None:
        super().__init__(valid)
        batch, length = valid.shape
        self.map = torch.zeros(batch, length, length, device=valid.device)  # [batch, q, k]

    def update(self, probs: torch.Tensor, q0: int) -> None:
        self.maps += probs.shape[1] if q0 == 0 else 0
        rounded = probs.to(torch.bfloat16).float().sum(dim=1)  # [batch, block, k1]
        self.map[:, q0 : q0 + probs.shape[2], : probs.shape[3]] += rounded.to(self.map.device)


_ACTIVE: ContextVar[_Reduction | None] = ContextVar("elusive_attention_reduction", default=None)


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # [batch, heads, q, head_dim]
    key: torch.Tensor,  # [batch, kv_heads, k, head_dim]
    value: torch.Tensor,  # [batch, kv_heads, k, head_dim]
    attention_mask: torch.Tensor | None,  # [batch, 1, q, k] bool or additive float, or None
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Eager attention computed in query blocks, each block's probabilities handed to the
    active reduction; plain SDPA when no reduction is active (e.g. in `generate`)."""
    reduction = _ACTIVE.get()
    if reduction is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, softcap=softcap, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # [batch, heads, k, head_dim] (GQA)
    value = value.repeat_interleave(groups, dim=1)
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    scaling = head_dim**-0.5 if scaling is None else scaling
    if _kernel_fits(reduction, query, key, sliding_window, softcap):
        out, lse = kernels.attention_with_lse(query, key, value, scaling)
        reduction.fold(query, key, lse, scaling)
        return out.transpose(1, 2).contiguous(), None
    budget = BLOCK_ELEMENTS.get(query.device.type, BLOCK_ELEMENTS["cpu"])
    block = max(1, budget // (batch * heads * k_len))
    out = torch.empty_like(query)  # [batch, heads, q, head_dim]
    for q0 in range(0, q_len, block):
        q1 = min(q0 + block, q_len)
        k1 = q1 + k_len - q_len  # causal: later keys are masked for every query of the block
        # scale the [block, head_dim] queries rather than the [block, k1] logits: fewer flops
        logits = torch.matmul(query[:, :, q0:q1] * scaling, key[:, :, :k1].transpose(2, 3))
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        logits = _mask_block(logits.float(), attention_mask, q0, q1, sliding_window)
        probs = torch.softmax(logits, dim=-1)  # [b, h, q1 - q0, k1] float32
        reduction.update(probs, q0)
        out[:, :, q0:q1] = torch.matmul(probs.to(value.dtype), value[:, :, :k1])
    return out.transpose(1, 2).contiguous(), None


def _kernel_fits(
    reduction: _Reduction,
    query: torch.Tensor,  # [batch, heads, q, head_dim]
    key: torch.Tensor,  # [batch, heads, k, head_dim]
    sliding_window: int | None,
    softcap: float | None,
) -> bool:
    """Whether this layer can go through the fused kernel: a reduction that takes it, on one of
    `KERNEL_DEVICES`, a plain causal layer (no sliding window or softcap) whose padding the
    causal mask alone hides from every real query (real tokens first), and on a GPU the half
    precision and head size of PyTorch's flash attention."""
    device = query.device
    if not reduction.fused or device.type not in KERNEL_DEVICES or not kernels.available(device):
        return False
    if sliding_window is not None or softcap is not None or query.shape[2] != key.shape[2]:
        return False
    flash = query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
    return (device.type != "cuda" or flash) and reduction.right_padded


def _mask_block(
    logits: torch.Tensor,  # [b, h, q1 - q0, k1] float32
    mask: torch.Tensor | None,
    q0: int,
    q1: int,
    sliding_window: int | None,
) -> torch.Tensor:
    k1 = logits.shape[-1]
    if mask is not None and mask.dtype != torch.bool:
        return logits + mask[:, :, q0:q1, :k1].float()
    if mask is None:  # plain causal (transformers skips the mask when it can)
        i = torch.arange(q0, q1, device=logits.device)[:, None] + k1 - q1
        j = torch.arange(k1, device=logits.device)[None, :]
        allowed = j <= i
        if sliding_window is not None:
            allowed &= i - j < sliding_window
        mask = allowed[None, None]
    else:
        mask = mask[:, :, q0:q1, :k1]
    return logits.masked_fill(~mask, torch.finfo(torch.float32).min)


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


@contextlib.contextmanager
def _collecting(model: PreTrainedModel, reduction: _Reduction) -> Iterator[None]:
    """Route the model's attention through `_attention`, feeding `reduction`."""
    previous = model.config._attn_implementation
    if previous != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    token = _ACTIVE.set(reduction)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
        if previous != ATTN_IMPLEMENTATION:
            model.set_attn_implementation(previous)


def _run(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [batch, T]
    attention_mask: torch.Tensor,  # [batch, T] 1 = token, 0 = padding (either side)
    reduction: _Reduction,
) -> None:
    """One forward pass feeding `reduction`; the inputs must be on the model's input device
    (see `_on_model`). The LM head runs on the last position only (`logits_to_keep`): the whole
    model is called, not its decoder stack, so that accelerate's hooks of a model dispatched as
    one piece (device map ``{"": "disk"}``) still bring its weights in."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [batch, T]
    with _collecting(model, reduction), torch.inference_mode():
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=1,
        )


def attention_received(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [batch, T]
    attention_mask: torch.Tensor | None = None,  # [batch, T]
) -> torch.Tensor:
    """s_j for every token: ``[batch, T]`` float32 on the CPU, 0 at padding. The inputs may
    live anywhere; the forward pass runs on the model's device."""
    input_ids, mask = _on_model(model, input_ids, attention_mask)
    valid = mask.bool()
    reduction = _ColumnSum(valid)
    _run(model, input_ids, mask, reduction)
    seen_by = valid.flip(-1).cumsum(-1).flip(-1)  # [batch, T] real queries i >= j
    scores = torch.where(valid, reduction.total / reduction.maps / seen_by.clamp(min=1), 0.0)
    return scores.cpu()


def attention_row(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [batch, T]
    query: torch.Tensor,  # [batch] position of the query token in each sequence
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention row of one query per sequence, mean over layers and heads: [batch, T]
    float32 on the CPU."""
    input_ids, mask = _on_model(model, input_ids, attention_mask)
    reduction = _QueryRow(mask.bool(), query.to(input_ids.device))
    _run(model, input_ids, mask, reduction)
    return (reduction.total / reduction.maps).cpu()


def authors_scores(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # [batch, T]
    attention_mask: torch.Tensor | None = None,  # [batch, T]
) -> torch.Tensor:
    """The per-token score of the authors' released code (contrasting_attention, commit
    d1c3171, ``save_attention.py``), replayed: the bf16 attention maps averaged over layers
    and heads (rounded to bf16), each *row* summed (rounded) and divided by i + 1, the
    position among the real tokens (rounded). Softmax rows sum to 1, so this is bf16(1/(i+1))
    up to bf16 rounding for any model; two models' scores differ only where their rounding
    does. ``[batch, T]`` float32 on the CPU, 0 at padding."""
    input_ids, mask = _on_model(model, input_ids, attention_mask)
    valid = mask.bool()
    reduction = _RowSumsBf16(valid)
    _run(model, input_ids, mask, reduction)
    mean = (reduction.map / reduction.maps).to(torch.bfloat16)  # [batch, q, k]
    row_sums = mean.float().sum(dim=-1).to(torch.bfloat16)  # [batch, q]
    position = valid.long().cumsum(-1)  # [batch, T] i + 1
    quotient = (row_sums.float() / position.to(torch.bfloat16).float()).to(torch.bfloat16)
    return torch.where(valid, quotient.float(), 0.0).cpu()


def _on_model(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) on the model's input device (`elusive.models.input_device`:
    a dispatched model's first device); a missing mask is all ones."""
    from elusive.models import input_device

    device = input_device(model)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    return input_ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Tokenized:
    """A text as a model sees it: ``prefix + text`` tokenized, special tokens included.

    `offsets` are relative to the original text (prefix removed, clipped at 0); `in_prefix`
    marks tokens that lie wholly inside the prefix (scored but left out of the output).
    """

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    in_prefix: list[bool]

    @property
    def kept(self) -> list[int]:
        """Positions of the output tokens."""
        return [k for k, p in enumerate(self.in_prefix) if not p]


def tokenize(tokenizer, text: str, prefix: str = "") -> Tokenized:
    """Tokenize ``prefix + text`` with offsets; token strings are the text they cover."""
    enc = tokenizer(prefix + text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, shift = list(enc["input_ids"]), len(prefix)
    special = [bool(s) for s in enc["special_tokens_mask"]]
    offsets, tokens, in_prefix = [], [], []
    for tid, (start, end), is_special in zip(ids, enc["offset_mapping"], special, strict=True):
        span = (max(start - shift, 0), max(end - shift, 0))
        offsets.append(span)
        tokens.append(tokenizer.convert_ids_to_tokens(tid) if is_special else text[slice(*span)])
        in_prefix.append(not is_special and end <= shift)
    return Tokenized(ids, tokens, offsets, special, in_prefix)


def is_eligible(token: str, special: bool) -> bool:
    """Rankable: not a special token, and holds a letter or digit (paper, footnote 2)."""
    return not special and any(ch.isalnum() for ch in token)


def token_rows(records: Sequence[Record], spec: str, prefix: str = "") -> list[TextScores]:
    """Rows of a scores file without scores: each text's tokens under model `spec`'s tokenizer
    (``prefix`` tokens left out), their offsets and eligibility, as `score_records` writes them
    for the trained role. The policies that rank nothing draw from them
    (`elusive.augment.dropout.NEEDS_SCORES`), so a run of those alone loads no model to score."""
    from elusive.models import load_tokenizer

    tokenizer = load_tokenizer(spec)
    rows = []
    for record in records:
        tok = tokenize(tokenizer, record.text, prefix)
        rows.append(
            TextScores(
                id=record.id,
                text_sha256=record.sha256,
                tokens=[tok.tokens[k] for k in tok.kept],
                offsets=[tok.offsets[k] for k in tok.kept],
                eligible=[is_eligible(tok.tokens[k], tok.special[k]) for k in tok.kept],
                scores={},
            )
        )
    return rows


def _batches(items: Sequence[Tokenized], batch_size: int) -> Iterator[list[int]]:
    """Indices of `items` in batches of similar length (longest first), to pad little."""
    order = sorted(range(len(items)), key=lambda k: -len(items[k].ids))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _score_batch(
    model: PreTrainedModel,
    items: Sequence[Tokenized],
    batch: Sequence[int],
    queries: Sequence[int] | None = None,
    score: str = "received",
) -> list[list[float]]:
    """s_j of every token of ``items[k]`` for k in `batch`, one right-padded forward pass (with
    `score` "authors": `authors_scores`); with `queries`, the attention row of token
    ``queries[k]`` instead."""
    length = max(len(items[k].ids) for k in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long)
    mask = torch.zeros(len(batch), length, dtype=torch.long)
    for row, k in enumerate(batch):
        ids[row, : len(items[k].ids)] = torch.tensor(items[k].ids)
        mask[row, : len(items[k].ids)] = 1
    if queries is None and score == "authors":
        scores = authors_scores(model, ids, mask)  # [batch, length]
    elif queries is None:
        scores = attention_received(model, ids, mask)  # [batch, length]
    else:
        scores = attention_row(model, ids, torch.tensor([queries[k] for k in batch]), mask)
    return [scores[row, : len(items[k].ids)].tolist() for row, k in enumerate(batch)]


@dataclass
class QueryAttention:
    """One query token's attention over the output tokens (mean over layers and heads)."""

    tokens: list[str]
    offsets: list[tuple[int, int]]
    eligible: list[bool]
    weights: list[float]
    query: int
    """Index of the query token in `tokens`."""


def query_attention(
    model: PreTrainedModel,
    tokenizer,
    text: str,
    *,
    query_token: int | None = None,
    query_char: int | None = None,
    prefix: str = "",
) -> QueryAttention:
    """The attention row of one query token: give its index among the output tokens
    (`query_token`) or a character it covers (`query_char`). Used for the paper's Figures 2-3
    with the token just before a field value (e.g. "at" before the company)."""
    tok = tokenize(tokenizer, text, prefix)
    kept = tok.kept
    offsets = [tok.offsets[k] for k in kept]
    if (query_token is None) == (query_char is None):
        raise AttentionError("give exactly one of query_token and query_char")
    if query_char is not None:
        covering = [n for n, (s, e) in enumerate(offsets) if s <= query_char < e]
        if not covering:
            raise AttentionError(f"query_char {query_char} is not inside any token of the text")
        query_token = covering[0]
    if not 0 <= query_token < len(kept):
        raise AttentionError(f"query_token {query_token} out of range 0..{len(kept) - 1}")
    row = attention_row(model, torch.tensor([tok.ids]), torch.tensor([kept[query_token]]))[0]
    return _query_result(tok, row.tolist(), query_token)


def _query_result(tok: Tokenized, row: Sequence[float], query_token: int) -> QueryAttention:
    """The `QueryAttention` of a text's attention row (over all its tokens, prefix included)."""
    kept = tok.kept
    return QueryAttention(
        tokens=[tok.tokens[k] for k in kept],
        offsets=[tok.offsets[k] for k in kept],
        eligible=[is_eligible(tok.tokens[k], tok.special[k]) for k in kept],
        weights=[row[k] for k in kept],
        query=query_token,
    )


# --------------------------------------------------------------------------- scores files


# --------------------------------------------------------------------------- scoring a corpus


class ScoreCache:
    """Scores of one model (and dtype) keyed by text: JSON chunk files, each written atomically,
    so an interrupted run keeps every finished chunk. Processes scoring side by side write
    chunks of their own texts and read each other's (`refresh`). A cache that cannot be written
    (read-only, full) keeps this process's scores in memory, with a DroppedDataWarning."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.entries: dict[str, dict[str, Any]] = {}
        self.read: set[str] = set()  # names of the chunk files in `entries`
        self.unwritable = False  # a write failed: the scores of this run are in memory only
        self.refresh()

    def refresh(self) -> None:
        """Read the chunk files not read yet (written since, e.g. by other processes)."""
        for path in sorted(self.folder.glob("chunk-*.json")):
            if path.name in self.read:
                continue
            try:
                self.entries.update(json.loads(path.read_text("utf-8")))
            except (OSError, ValueError):
                continue  # a damaged chunk is recomputed
            self.read.add(path.name)

    @staticmethod
    def key(prefix: str, text: str, query: int | None = None) -> str:
        """The key of a text's scores, or of the attention row of its token `query`."""
        return hashlib.sha256(
            json.dumps([prefix, text] if query is None else [prefix, text, query]).encode("utf-8")
        ).hexdigest()

    def get(self, key: str, ids: list[int]) -> list[float] | None:
        entry = self.entries.get(key)
        return entry["scores"] if entry is not None and entry["ids"] == ids else None

    def put(self, entries: dict[str, dict[str, Any]]) -> None:
        """Add scores; written to a chunk file when the cache can be written."""
        name = f"chunk-{hashlib.sha256(''.join(sorted(entries)).encode()).hexdigest()[:16]}.json"
        self.entries.update(entries)
        try:
            atomic_write_text(self.folder / name, json.dumps(entries))
        except OSError as exc:
            # Losing the cache costs a rerun time; losing the scores would cost this run.
            if not self.unwritable:
                warnings.warn(
                    f"{self.folder.parent}: cannot write the score cache "
                    f"({os_reason(exc)}); this run keeps its scores in memory, "
                    "a rerun scores again",
                    DroppedDataWarning,
                    stacklevel=2,
                )
            self.unwritable = True
            return
        self.read.add(name)


def _round(x: float) -> float:
    return float(f"{x:.7g}")


@dataclass
class _Scored:
    """One model's cached scores of every item, and what this process computed of them."""

    fingerprint: str
    scores: list[list[float]]
    texts: int
    tokens: int


def _model_scores(
    spec: str,
    role: str,
    texts: Sequence[str],
    items: Sequence[Tokenized],
    config: AttentionConfig,
    progress: bool,
    queries: Sequence[int] | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    dist: Dist | None = None,
) -> _Scored:
    """s_j of every token of each item (with `queries`: the attention row of token
    ``queries[n]`` of item n), computing only what the cache lacks.

    The texts missing from the cache are cut into the batches one process runs (chunks of
    ``config.chunk_size`` texts in input order, each batched longest first) and each process of
    `dist` (default: this one alone) runs its share of those batches (`elusive.parallel`,
    balanced by padded tokens) and writes them to the cache, where the others read them: each
    score is computed in the batch one process would compute it in, so the scores do not depend
    on the number of processes. A collective: every process must call it alike. `device_map`
    and `max_memory` dispatch the model over several devices (`elusive.models.load_model`),
    checked here before any work, also where the cache holds everything.
    """
    from tqdm.auto import tqdm

    from elusive.models import DTYPES, cache_root, check_placement, load_model, model_fingerprint

    check_placement(device_map, max_memory)
    dist = dist or Dist.single()
    fingerprint = model_fingerprint(spec, cache_dir=config.cache_dir)
    # query rows are the same under either score; the authors' scores are cached apart
    kind = f"-{config.score}" if config.score != "received" and queries is None else ""
    cache = ScoreCache(
        cache_root(config.cache_dir) / "attention" / f"{fingerprint}-{config.dtype}{kind}"
    )
    keys = [
        ScoreCache.key(config.prefix, t, None if queries is None else queries[n])
        for n, t in enumerate(texts)
    ]
    missing = [n for n, item in enumerate(items) if cache.get(keys[n], item.ids) is None]
    dist.barrier()  # every process has read the cache before any writes to it
    batches = []  # (chunk start, indices of items): the one-process order
    for start in range(0, len(missing), config.chunk_size):
        chunk = missing[start : start + config.chunk_size]
        for batch in _batches([items[n] for n in chunk], config.batch_size):
            batches.append((start, [chunk[k] for k in batch]))
    mine = [
        batches[b]
        for b in dist.share([len(ns) * max(len(items[n].ids) for n in ns) for _, ns in batches])
    ]
    done = sum(len(ns) for _, ns in mine)
    if mine:
        model, _ = load_model(
            spec,
            DTYPES[config.dtype],
            cache_dir=config.cache_dir,
            device_map=device_map,
            max_memory=max_memory,
        )
        with tqdm(
            total=len(items) - len(missing) + done,
            initial=len(items) - len(missing),
            desc=role,
            unit="text",
            disable=not (progress and dist.is_main),
        ) as bar:
            for _, group in itertools.groupby(mine, key=lambda pair: pair[0]):
                entries = {}
                for _, batch in group:
                    scores = _score_batch(model, items, batch, queries, config.score)
                    for n, s in zip(batch, scores, strict=True):
                        entries[keys[n]] = {"ids": items[n].ids, "scores": [_round(x) for x in s]}
                    bar.update(len(batch))
                cache.put(entries)
    dist.barrier()  # every share is in the cache
    cache.refresh()
    scores = [cache.get(k, item.ids) for k, item in zip(keys, items, strict=True)]
    if None in scores:  # another process's share, which it could not write to the cache
        raise AttentionError(
            f"{cache.folder}: launched processes share their scores through the cache, which "
            "cannot be written; give a writable cache_dir (or $ELUSIVE_CACHE)"
        )
    return _Scored(
        fingerprint,
        scores,
        texts=done,
        tokens=sum(len(items[n].ids) for _, ns in mine for n in ns),
    )


def _check_same_tokens(record: Record, large: Tokenized, small: Tokenized) -> None:
    for k in range(max(len(large.ids), len(small.ids))):
        a = large.tokens[k] if k < len(large.ids) else "<end of text>"
        b = small.tokens[k] if k < len(small.ids) else "<end of text>"
        if k >= len(large.ids) or k >= len(small.ids) or large.ids[k] != small.ids[k]:
            raise AttentionError(
                f"text {record.id!r}: the large and small models tokenize it differently at "
                f"token {k}: {a!r} (large) vs {b!r} (small); use --align chars to contrast "
                "models with different tokenizers"
            )


def _project(
    source: Tokenized, scores: list[float], target: Tokenized, n_chars: int
) -> list[float]:
    """Map one model's token scores onto `target`'s tokens through characters: each character
    takes the mean score of the source tokens covering it, each target token the mean over its
    characters (0.0 for tokens that cover none, e.g. BOS)."""
    total, count = np.zeros(n_chars), np.zeros(n_chars)
    for k in source.kept:
        start, end = source.offsets[k]
        total[start:end] += scores[k]
        count[start:end] += 1
    out = []
    for start, end in target.offsets:
        covered = count[start:end] > 0
        out.append(
            float((total[start:end][covered] / count[start:end][covered]).mean())
            if covered.any()
            else 0.0
        )
    return out


class TextTooLong(AttentionError):
    """A text longer than a scoring model's positions."""


def _positions(spec: str, cache_dir: Path | None) -> int | None:
    """The positions of model `spec` (``max_position_embeddings``), read from its config alone,
    before any weights load; None where the config gives none."""
    from transformers import AutoConfig

    from elusive.models import resolve_model

    model_config = AutoConfig.from_pretrained(resolve_model(spec, cache_dir=cache_dir))
    return getattr(model_config.get_text_config(), "max_position_embeddings", None)


def _check_chars(records: Sequence[Record], tokenizer, limit: int | None, spec: str) -> None:
    """Refuse, before tokenising, a text too long in characters for the model's positions: no
    token covers more characters than the vocabulary's longest string (byte-level and
    sentencepiece BPE cover every character of a text), so a text of more than ``limit *
    longest`` characters has more than `limit` tokens. Tokenising a huge text (megabytes on one
    line) takes minutes and gigabytes; this takes a pass over the lengths, and over the
    vocabulary only where a text is longer than `limit` characters."""
    if limit is None or max((len(r.text) for r in records), default=0) <= limit:
        return
    longest = max(map(len, tokenizer.get_vocab()))
    for record in records:
        if len(record.text) > limit * longest:
            raise TextTooLong(
                f"text {record.id!r} is {len(record.text)} characters long, more than the "
                f"{limit} positions of model {spec!r} hold (at most {longest} characters a "
                "token): cut it into passages (corpus.chunk in a run config)"
            )


def _check_lengths(
    records: Sequence[Record], items: Sequence[Tokenized], limit: int | None, spec: str
) -> None:
    """Refuse, before scoring, a text longer than the model's positions: its attention past
    them says nothing the model learnt."""
    for record, item in zip(records, items, strict=True):
        if limit is not None and len(item.ids) > limit:
            raise TextTooLong(
                f"text {record.id!r} is {len(item.ids)} tokens long (prefix and special tokens "
                f"included), more than the {limit} positions of model {spec!r}: cut it into "
                "passages (corpus.chunk in a run config)"
            )


def score_records(
    records: Sequence[Record],
    specs: dict[str, str],
    config: AttentionConfig | None = None,
    *,
    progress: bool = True,
    device_map: Any = None,
    max_memory: dict | None = None,
    dist: Dist | None = None,
) -> tuple[list[TextScores], dict[str, str], list[dict[str, int]]]:
    """Score every record with each model of `specs` ({"large": s, "small": s} or
    {"model": s}). Returns the rows, each role's model fingerprint and, per process of `dist`
    (default: this one alone; see `_model_scores`), the texts and tokens it scored over all
    roles. A collective: every process of `dist` must call it alike. `device_map` and
    `max_memory` dispatch each model over several devices (`elusive.models.load_model`)."""
    from elusive.models import load_tokenizer

    dist = dist or Dist.single()
    config = config or AttentionConfig()
    config.validate()
    if sorted(specs) not in (sorted(ROLES), ["model"]):
        raise AttentionError(f"give a large and a small model, or one model; got {sorted(specs)}")
    trained = config.trained if "model" not in specs else "model"
    texts = [r.text for r in records]
    items = {}
    for role, spec in specs.items():
        tokenizer = load_tokenizer(spec, cache_dir=config.cache_dir)
        limit = _positions(spec, config.cache_dir)
        _check_chars(records, tokenizer, limit, spec)
        items[role] = [tokenize(tokenizer, t, config.prefix) for t in texts]
        _check_lengths(records, items[role], limit, spec)
    if len(specs) == 2 and config.align == "tokens":
        for n, record in enumerate(records):
            _check_same_tokens(record, items["large"][n], items["small"][n])
    scored = {
        role: _model_scores(
            spec, role, texts, items[role], config, progress, None, device_map, max_memory, dist
        )
        for role, spec in specs.items()
    }
    raw = {role: s.scores for role, s in scored.items()}
    processes = dist.gather(
        [
            {
                "rank": dist.rank,
                "texts": sum(s.texts for s in scored.values()),
                "tokens": sum(s.tokens for s in scored.values()),
            }
        ]
    )

    rows = []
    for n, record in enumerate(records):
        target = items[trained][n]
        kept = target.kept
        scores = {}
        for role in specs:
            full = raw[role][n]
            if role != trained and config.align == "chars":
                full = _project(items[role][n], full, target, len(record.text))
            scores[role] = [_round(full[k]) for k in kept]
        tokens = [target.tokens[k] for k in kept]
        eligible = [is_eligible(target.tokens[k], target.special[k]) for k in kept]
        contrast = None
        if "large" in scores:
            contrast = [
                _round(a - b) for a, b in zip(scores["large"], scores["small"], strict=True)
            ]
        rows.append(
            TextScores(
                id=record.id,
                text_sha256=record.sha256,
                tokens=tokens,
                offsets=[target.offsets[k] for k in kept],
                eligible=eligible,
                scores=scores,
                contrast=contrast,
                rank=rank_desc(contrast if contrast is not None else scores[trained], eligible),
            )
        )
    return rows, {role: s.fingerprint for role, s in scored.items()}, processes


def query_attentions(
    spec: str,
    texts: Sequence[str],
    queries: Sequence[int],
    config: AttentionConfig | None = None,
    *,
    progress: bool = True,
    device_map: Any = None,
    max_memory: dict | None = None,
    dist: Dist | None = None,
) -> list[QueryAttention]:
    """`query_attention` of many texts under model `spec`: the attention row of token
    ``queries[n]`` (an index among the output tokens) of text n. Batched, cached and shared
    among the processes of `dist` as `score_records` is (a collective too); `config` gives the
    prefix, dtype, batch size and cache; `device_map` and `max_memory` as in `score_records`."""
    from elusive.models import load_tokenizer

    config = config or AttentionConfig()
    config.validate()
    tokenizer = load_tokenizer(spec, cache_dir=config.cache_dir)
    items = [tokenize(tokenizer, t, config.prefix) for t in texts]
    for n, (item, query) in enumerate(zip(items, queries, strict=True)):
        if not 0 <= query < len(item.kept):
            raise AttentionError(
                f"text {n}: query_token {query} out of range 0..{len(item.kept) - 1}"
            )
    positions = [item.kept[q] for item, q in zip(items, queries, strict=True)]
    rows = _model_scores(
        spec, "query rows", texts, items, config, progress, positions, device_map, max_memory, dist
    ).scores
    return [_query_result(i, r, q) for i, r, q in zip(items, rows, queries, strict=True)]


def score_corpus(
    specs: dict[str, str],
    corpus: str | Path,
    out_dir: str | Path,
    config: AttentionConfig | None = None,
    *,
    progress: bool = True,
    device_map: Any = None,
    max_memory: dict | None = None,
    text_field: str = "text",
    dist: Dist | None = None,
) -> list[TextScores]:
    """Score a corpus file and write the scores folder (`scores.jsonl` + `manifest.json`);
    `device_map` and `max_memory` as in `score_records`, `text_field` as in `read_corpus`.

    The manifest names the corpus relative to the scores folder, so `augment` finds it from
    any working folder, and after both are moved together; its ``processes`` say what each
    process scored. The processes of `dist` (default: those of `accelerate launch`, this one
    alone when not launched) share the scoring and the main one writes the folder, the bytes of
    ``scores.jsonl`` a single process writes."""
    dist = dist or Dist.launched()
    config = config or AttentionConfig()
    check_out_dir(out_dir, ("scores.jsonl", "manifest.json"))
    check_apart(
        [Path(out_dir, name) for name in ("scores.jsonl", "manifest.json")], {"--corpus": corpus}
    )
    records = read_corpus(corpus, text_field)
    try:
        rows, fingerprints, processes = score_records(
            records,
            specs,
            config,
            progress=progress,
            device_map=device_map,
            max_memory=max_memory,
            dist=dist,
        )
    except TextTooLong as exc:
        raise TextTooLong(f"{corpus}: {exc}") from None
    manifest = {
        "models": {r: {"spec": str(s), "fingerprint": fingerprints[r]} for r, s in specs.items()},
        "corpus": os.path.relpath(Path(corpus).resolve(), Path(out_dir).resolve()),
        "prefix": config.prefix,
        "align": config.align,
        **({"score": config.score} if config.score != "received" else {}),
        "trained": config.trained if "model" not in specs else "model",
        "processes": processes,
    }
    if dist.is_main:
        write_scores(out_dir, manifest, rows)
    return rows

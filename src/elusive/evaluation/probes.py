"""Knowledge probes: what a model knows, measured without asking it to phrase an answer.

Closed-book QA with greedy answers (`elusive.evaluation.evaluate`) is the paper's measure, but a
small model can store a fact and still fail to say it through a question. These probes read the
model's probabilities instead:

- ``logprob``: the mean log-probability per token of the gold answer right after the prompt,
  teacher forced; the best over several golds. Continuous and low-variance.
- ``choice``: 1 if the gold answer has a higher total log-probability after the prompt than
  every one of k distractors (other people's values of the same field, or other questions'
  answers), else 0. Chance is 1 / (k + 1).

Each runs after the QA prompt and, for biographies, after the *cloze* prompt: the field's own
sentence with the full name, cut right before the value ("Liam Thompson was born on").

A candidate answer is the prompt's tokens followed by the tokens of ``" " + answer``, exactly
as a k-shot example joins its answer. Every prompt is run once (in evaluation, by the greedy
generation that answers it); its key/value cache is then copied to one row per candidate, so
k + 1 candidates cost one short forward of the candidates' tokens, no prompt pass of their own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from elusive.corpus.records import QAItem
from elusive.metrics import normalize_answer


@dataclass(frozen=True)
class CandidateScore:
    """Teacher-forced log-probability of one candidate continuation."""

    total: float
    """Sum of the log-probabilities of the candidate's tokens."""
    tokens: int

    @property
    def mean(self) -> float:
        return self.total / self.tokens


def pick_distractors(items: Sequence[QAItem], k: int, seed: int = 0) -> list[tuple[str, ...]]:
    """For each item, up to `k` wrong answers drawn from the answers of the other items of the
    same pool (distinct after normalisation, never equal to one of the item's golds).

    An item's pool is its `field`; an item with a `kind` (span-cloze probes, SQuAD questions:
    `elusive.corpus.cloze`) draws from the items of that kind instead, leaving out every answer of
    items about its own source (a passage's other facts are not what a wrong answer about it
    should be). The draw for an item depends only on (`seed`, item id) and the set of answers
    (not their order), so every checkpoint evaluated on the same questions gets the same
    distractors.
    """

    def pool_of(item: QAItem) -> tuple[str, str]:
        return ("kind", item.kind) if item.kind is not None else ("field", item.field)

    pools: dict[tuple[str, str], dict[str, str]] = {}  # pool -> normalised answer -> spelling
    own: dict[tuple[str, str, str], set[str]] = {}  # (pool, source) -> its normalised answers
    for item in items:
        pool = pools.setdefault(pool_of(item), {})
        for answer in item.answers:
            pool.setdefault(normalize_answer(answer), answer)
        if item.kind is not None:
            own.setdefault((*pool_of(item), item.source_id), set()).update(
                normalize_answer(a) for a in item.answers
            )
    out = []
    for item in items:
        golds = {normalize_answer(a) for a in item.answers}
        golds |= own.get((*pool_of(item), item.source_id), set())
        wrong = [a for norm, a in sorted(pools[pool_of(item)].items()) if norm not in golds]
        rng = random.Random(f"{seed}:{item.id}")
        out.append(tuple(rng.sample(wrong, min(k, len(wrong)))))
    return out


def distractor_shortage(
    items: Sequence[QAItem], distractors: Sequence[Sequence[str]], k: int
) -> dict[str, dict[str, int]]:
    """Where `pick_distractors` found fewer than `k`: per field (in first-seen order) and
    ``overall``, the ``questions`` short of distractors and the ``fewest`` any of them got.
    Fields with enough are left out; empty when every question got `k`. Such a question's
    ``choice`` is out of fewer answers, so its chance is above 1/(k+1)."""
    short: dict[str, dict[str, int]] = {}
    for item, wrong in zip(items, distractors, strict=True):
        if len(wrong) < k:
            for key in (item.field, "overall"):
                entry = short.setdefault(key, {"questions": 0, "fewest": len(wrong)})
                entry["questions"] += 1
                entry["fewest"] = min(entry["fewest"], len(wrong))
    if "overall" in short:
        short["overall"] = short.pop("overall")  # last, as in `elusive.metrics.aggregate`
    return short


def candidate_ids(tokenizer, candidates: Sequence[Sequence[str]]) -> list[list[list[int]]]:
    """Token ids of each candidate as it follows a prompt: the tokens of ``" " + answer``."""
    return [
        [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in cands]
        for cands in candidates
    ]


ROWS_PER_FORWARD = 64
"""Candidate rows per forward pass; rows of similar length go together (little padding)."""


@torch.no_grad()
def score_after_prompts(
    model,
    first_logits: torch.Tensor,
    cache,
    mask: torch.Tensor,
    cand_ids: Sequence[Sequence[Sequence[int]]],
) -> list[list[CandidateScore]]:
    """Score the candidates of a batch of left-padded prompts that the model has already run.

    `first_logits` [batch, vocab] are the prompts' last-position logits, `cache` their
    key/value cache (prompt tokens only), `mask` [batch, width] their attention mask and
    `cand_ids[b]` the candidates' token ids of prompt b. Token 0 of a candidate is scored from
    `first_logits`, token j > 0 from a forward pass of tokens 0..j-1 on a copy of the cache;
    the last token is never fed, so one-token candidates cost no forward at all.
    """
    import copy

    from elusive.models import input_device

    device = input_device(model)
    first_logp = torch.log_softmax(first_logits.float(), dim=-1).to(device)  # [batch, vocab]
    rows = [(b, j, seq) for b, cands in enumerate(cand_ids) for j, seq in enumerate(cands)]
    out = [[CandidateScore(0.0, 0)] * len(cands) for cands in cand_ids]
    rows.sort(key=lambda row: len(row[2]))
    lengths = mask.sum(-1)  # [batch]: real prompt tokens of each row
    for start in range(0, len(rows), ROWS_PER_FORWARD):
        group = rows[start : start + ROWS_PER_FORWARD]
        source = torch.tensor([b for b, _, _ in group])
        width = max(len(seq) for _, _, seq in group)
        cand = torch.zeros((len(group), width), dtype=torch.long)  # [rows, cand]
        cand_mask = torch.zeros((len(group), width), dtype=torch.long)  # [rows, cand]
        for r, (_, _, seq) in enumerate(group):
            cand[r, : len(seq)] = torch.tensor(seq)
            cand_mask[r, : len(seq)] = 1
        cand = cand.to(device)
        token_logp = first_logp[source.to(device)].gather(-1, cand[:, :1])  # [rows, 1]
        if width > 1:
            rows_cache = copy.deepcopy(cache)
            # indices on the CPU: they index each layer's keys on that layer's device
            rows_cache.batch_select_indices(source)
            logits = model(
                input_ids=cand[:, :-1],
                attention_mask=torch.cat([mask[source], cand_mask[:, :-1]], dim=-1).to(device),
                position_ids=(lengths[source, None] + torch.arange(width - 1)).to(device),
                **cache_argument(model, rows_cache),
                use_cache=True,
            ).logits.float()  # [rows, cand - 1, vocab]
            # log p(token) = its logit - logsumexp(logits): no [rows, cand, vocab] log-softmax
            rest = logits.gather(-1, cand[:, 1:, None])[..., 0] - logits.logsumexp(-1)
            token_logp = torch.cat([token_logp, rest], dim=1)  # [rows, cand]
        totals = (token_logp.cpu() * cand_mask).sum(-1)  # [rows]
        for r, (b, j, seq) in enumerate(group):
            out[b][j] = CandidateScore(float(totals[r]), len(seq))
    return out


@torch.no_grad()
def score_candidates(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    batch_size: int = 16,
    progress: bool = True,
) -> list[list[CandidateScore]]:
    """Log-probability of each candidate answer after its prompt: one list per prompt.

    Prompts run in batches of `batch_size`, left-padded, with position ids counted from each
    row's first real token, so every row scores as it would alone. (`elusive.evaluation.evaluate`
    scores candidates on the cache of its QA generation instead, saving this prompt pass.)
    """
    from tqdm.auto import tqdm

    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    cands = candidate_ids(tokenizer, candidates)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[list[CandidateScore]] = [[] for _ in prompts]
    for batch in tqdm(batches, desc="probe", disable=not progress):
        ids, mask = left_pad([prompt_ids[i] for i in batch], pad_id(tokenizer))  # [batch, width]
        first = prompt_pass(model, ids, mask)
        cache = model_cache(first)
        scores = score_after_prompts(
            model, first.logits[:, -1], cache, mask, [cands[i] for i in batch]
        )
        for i, score in zip(batch, scores, strict=True):
            out[i] = score
    return out


def prompt_pass(model, ids: torch.Tensor, mask: torch.Tensor, cache=None):
    """One forward pass of left-padded prompts (ids and mask [batch, width], anywhere) on the
    model's input device, positions counted from each row's first real token (so a row runs as
    it would alone), keeping the key/value cache; only the last position's logits are made
    (no [batch, width, vocab]). With `cache` (the keys and values of the first
    ``cache.get_seq_length()`` positions of every row, extended here) only the tokens after
    those run."""
    from elusive.models import input_device

    device = input_device(model)
    done = cache.get_seq_length() if cache is not None else 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [batch, width]
    return model(
        input_ids=ids[:, done:].to(device),
        attention_mask=mask.to(device),
        position_ids=positions[:, done:].to(device),
        use_cache=True,
        logits_to_keep=1,
        **({} if cache is None else cache_argument(model, cache)),
    )


def pad_id(tokenizer) -> int:
    """The id that pads batches: the tokenizer's pad token, else its EOS (Qwen pads with EOS);
    padded positions are masked out, so the choice never changes a result."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each [batch, width]: `seqs` right-aligned to the longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # [batch, width]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [batch, width]
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def model_cache(output):
    """The key/value cache in a model's output: ``cache`` from transformers 5.x,
    ``past_key_values`` before (asked only when ``cache`` is absent: 5.x warns on the old
    name)."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def cache_argument(model, cache) -> dict:
    """The keyword a model's forward takes its key/value cache by (`cache` from transformers
    5.x, `past_key_values` before). A peft model (an adapter left unmerged, over 4-bit
    weights) passes its keywords on to the model it wraps: that one's forward tells."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = inspect.signature(inner.forward).parameters
    return {"cache": cache} if "cache" in takes else {"past_key_values": cache}


def judge(
    items: Sequence[QAItem],
    distractors: Sequence[Sequence[str]],
    scores: Sequence[Sequence[CandidateScore]],
) -> list[dict[str, float | None]]:
    """``choice`` and ``logprob`` of each item from the scores of its candidates, golds first
    then distractors (as `candidates` lists them). ``choice`` is None for an item without
    distractors (nothing to choose between)."""
    out = []
    for item, wrong, cand in zip(items, distractors, scores, strict=True):
        golds, others = cand[: len(item.answers)], cand[len(item.answers) :]
        best = max(g.total for g in golds)
        out.append(
            {
                "choice": float(best > max(o.total for o in others)) if wrong else None,
                "logprob": max(g.mean for g in golds),
            }
        )
    return out


def candidates(items: Sequence[QAItem], distractors: Sequence[Sequence[str]]) -> list[list[str]]:
    """The answers each item's probes score: its golds, then its distractors."""
    return [[*item.answers, *wrong] for item, wrong in zip(items, distractors, strict=True)]


def probe(
    model,
    tokenizer,
    prompts: Sequence[str],
    items: Sequence[QAItem],
    distractors: Sequence[Sequence[str]],
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict[str, float | None]]:
    """``choice`` and ``logprob`` of each item's gold answer(s) after its prompt."""
    cands = candidates(items, distractors)
    scores = score_candidates(model, tokenizer, prompts, cands, batch_size, progress)
    return judge(items, distractors, scores)

"""Knowledge probes: what a model knows, measured without asking it to phrase an answer.

Closed-book QA with greedy answers (`elusive.evaluate`) is the paper's measure, but a small
model can store a fact and still fail to say it through a question. These probes read the
model's probabilities instead:

- ``logprob``: the mean log-probability per token of the gold answer right after the prompt,
  teacher forced; the best over several golds. Continuous and low-variance.
- ``choice``: 1 if the gold answer has a higher total log-probability after the prompt than
  every one of k distractors (other people's values of the same field, or other questions'
  answers), else 0. Chance is 1 / (k + 1).

Each runs after the QA prompt and, for biographies, after the *cloze* prompt: the field's own
sentence with the full name, cut right before the value ("Liam Thompson was born on").

A candidate answer is the prompt's tokens followed by the tokens of ``" " + answer``, exactly
as a k-shot example joins its answer. Every prompt is run once; its key/value cache is then
copied to one row per candidate, so k + 1 candidates cost one prompt forward plus one short
forward of the candidates' tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .corpus import QAItem
from .metrics import normalize_answer


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
    same field (distinct after normalisation, never equal to one of the item's golds).

    The draw for an item depends only on (`seed`, item id) and the set of answers (not their
    order), so every checkpoint evaluated on the same questions gets the same distractors.
    """
    pools: dict[str, dict[str, str]] = {}  # field -> normalised answer -> first spelling
    for item in items:
        pool = pools.setdefault(item.field, {})
        for answer in item.answers:
            pool.setdefault(normalize_answer(answer), answer)
    out = []
    for item in items:
        golds = {normalize_answer(a) for a in item.answers}
        wrong = [a for norm, a in sorted(pools[item.field].items()) if norm not in golds]
        rng = random.Random(f"{seed}:{item.id}")
        out.append(tuple(rng.sample(wrong, min(k, len(wrong)))))
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
    row's first real token, so every row scores as it would alone.
    """
    from tqdm.auto import tqdm

    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    cand_ids = [
        [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in cands]
        for cands in candidates
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    out: list[list[CandidateScore]] = [[] for _ in prompts]
    for batch in tqdm(batches, desc="probe", disable=not progress):
        ids, mask = _left_pad([prompt_ids[i] for i in batch], pad_id)  # [batch, width]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        first = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=True,
            logits_to_keep=1,  # only the last position predicts: no [batch, width, vocab]
        )
        first_logp = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # [batch, vocab]

        # One row per (prompt, candidate): the prompt's cache repeated, then the candidate.
        rows = [(b, seq) for b, i in enumerate(batch) for seq in cand_ids[i]]
        if not rows:
            continue
        source = torch.tensor([b for b, _ in rows])
        cache = first.get("cache", first.get("past_key_values"))  # transformers 5 / 4 name
        cache.batch_select_indices(source.to(device))
        width = max(len(seq) for _, seq in rows)
        cand = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [rows, cand]
        cand_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [rows, cand]
        for r, (_, seq) in enumerate(rows):
            cand[r, : len(seq)] = torch.tensor(seq)
            cand_mask[r, : len(seq)] = 1
        lengths = mask.sum(-1)[source]  # [rows]: real prompt tokens of each row
        logits = model(
            input_ids=cand.to(device),
            attention_mask=torch.cat([mask[source], cand_mask], dim=-1).to(device),
            position_ids=(lengths[:, None] + torch.arange(width)).to(device),
            **_cache_argument(model, cache),
            use_cache=True,
        ).logits  # [rows, cand, vocab]
        # Token j of a candidate is predicted by the prompt's last position (j = 0) or by the
        # candidate's token j - 1; log p = logit - logsumexp(logits), without a log-softmax copy.
        cand = cand.to(device)
        pred = logits[:, :-1].float()  # [rows, cand - 1, vocab]
        rest = pred.gather(-1, cand[:, 1:, None])[..., 0] - pred.logsumexp(-1)
        head = first_logp[source.to(device)].gather(-1, cand[:, :1])  # [rows, 1]
        token_logp = torch.cat([head, rest], dim=1).cpu()  # [rows, cand]
        totals = (token_logp * cand_mask).sum(-1)  # [rows]
        for r, (b, seq) in enumerate(rows):
            out[batch[b]].append(CandidateScore(float(totals[r]), len(seq)))
    return out


def _cache_argument(model, cache) -> dict:
    """The keyword a model's forward takes its key/value cache by (`cache` from transformers
    5.x, `past_key_values` before)."""
    import inspect

    takes = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in takes else {"past_key_values": cache}


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [batch, width]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [batch, width]
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def probe(
    model,
    tokenizer,
    prompts: Sequence[str],
    items: Sequence[QAItem],
    distractors: Sequence[Sequence[str]],
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict[str, float | None]]:
    """``choice`` and ``logprob`` of each item's gold answer(s) after its prompt.

    ``choice`` is None for an item without distractors (nothing to choose between).
    """
    candidates = [[*item.answers, *wrong] for item, wrong in zip(items, distractors, strict=True)]
    scores = score_candidates(model, tokenizer, prompts, candidates, batch_size, progress)
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

"""Closed-book QA: prompts, greedy answers, EM/F1 and knowledge probes per field and overall.

Every evaluated question gets the paper's measure (a greedy answer scored by EM and F1, see
`elusive.metrics`) and, by default, the knowledge probes of `elusive.evaluation.probes`: the gold
answer's log-probability and its rank among distractors after the QA prompt and, for biographies,
after the cloze prompt, plus the cloze prompt's greedy EM/F1.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elusive.corpus.records import QAItem
from elusive.errors import ElusiveError
from elusive.evaluation.probes import CandidateScore
from elusive.io import DroppedDataWarning, atomic_write_text, write_jsonl
from elusive.metrics import LABELS, METRICS, FieldScore, aggregate, best_scores, unmeasured
from elusive.options import UNTRAINED, EvalConfig
from elusive.parallel import Dist

# --------------------------------------------------------------------------- closed-book QA
#
# A question becomes the prompt ``Question: {question}\nAnswer:`` (optionally after k solved
# examples of other people, separated by blank lines); the model continues greedily for at
# most 16 tokens and the continuation is cut to its first line and first sentence (see
# `cut_answer`) before scoring with `best_scores`.

_SHOT_SEPARATOR = "\n\n"
# A period after one of these words (or after initials such as "D.C") does not end a sentence.
_ABBREVIATIONS = frozenset(
    "st mt ft dr mr mrs ms jr sr prof inc co corp ltd bros no vs etc".split()
)
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# Autocast dtype of each `EvalConfig.mixed_precision` ("auto" resolves to one of these).
_AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cut_answer(text: str) -> str:
    """The answer in a model continuation: its first non-blank line, up to the first sentence
    end, without the final punctuation.

    A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace or the end of the text,
    except a period right after a known abbreviation ("St. Louis", "Dr.", "Inc.") or after
    initials ("D.C", "U.S"): "January 5, 1990. He was" -> "January 5, 1990"; "St. Louis, MO."
    -> "St. Louis, MO"; "Washington D.C.. He" -> "Washington D.C.". A period after an
    abbreviation that really ends the sentence ("Caterpillar Inc. He ...") is not cut there.
    """
    line = text.strip().split("\n", 1)[0]
    for match in _SENTENCE_END.finditer(line):
        if _ends_sentence(line, match):
            return line[: match.start()].strip()
    return line.strip()


def answer_complete(text: str) -> bool:
    """Whether `cut_answer` gives the same answer for `text` and for every continuation of it:
    its first non-blank line has ended, or holds a sentence end followed by whitespace. Greedy
    generation stops there (a period at the very end is undecided: "St." may go on "Louis")."""
    line, newline, _ = text.lstrip().partition("\n")
    if newline:
        return True
    return any(
        match.end() < len(line) and _ends_sentence(line, match)
        for match in _SENTENCE_END.finditer(line)
    )


def _ends_sentence(line: str, match: re.Match) -> bool:
    """Whether a ``.!?`` match in `line` ends the sentence (not an abbreviation or initials)."""
    words = line[: match.start()].split()
    word = words[-1] if words else ""
    return not (
        match.group() == "." and (word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word))
    )


def build_prompts(
    items: Sequence[QAItem], config: EvalConfig, pool: Sequence[QAItem] | None = None
) -> list[str]:
    """One prompt per item. With ``config.shots = k``, k solved examples come first, drawn
    from `pool` (default: `items`) in an order shuffled by ``config.shot_seed``, skipping the
    asked person, one example per field before any field repeats."""
    return [shots + asked for shots, asked in prompt_parts(items, config, pool)]


def prompt_parts(
    items: Sequence[QAItem], config: EvalConfig, pool: Sequence[QAItem] | None = None
) -> list[tuple[str, str]]:
    """`build_prompts`' prompts in two parts, (solved examples, question), whose concatenation
    is the prompt; the examples part is ``""`` without shots. Most questions get the same
    examples (only those about a person among them get others), so the examples part is what
    `answer_and_score` runs once for all the prompts that start with it."""
    config.validate()
    question = [config.template.format(question=q.question) for q in items]
    if not config.shots:
        return [("", asked) for asked in question]
    order = list(pool if pool is not None else items)
    random.Random(config.shot_seed).shuffle(order)
    parts = []
    for item, asked in zip(items, question, strict=True):
        shots = _pick_shots(order, item, config.shots)
        blocks = [config.template.format(question=s.question) + " " + s.answers[0] for s in shots]
        parts.append(("".join(block + _SHOT_SEPARATOR for block in blocks), asked))
    return parts


def _pick_shots(order: Sequence[QAItem], item: QAItem, k: int) -> list[QAItem]:
    """The first k examples in `order` about someone else, one per field before repeats."""
    picked: list[QAItem] = []
    fields: set[str] = set()
    for repeat in (False, True):
        for s in order:
            if len(picked) == k:
                return picked
            same = s.id == item.id or (item.source_id and s.source_id == item.source_id)
            if not same and s not in picked and (repeat or s.field not in fields):
                picked.append(s)
                fields.add(s.field)
    if len(picked) < k:
        raise ElusiveError(f"only {len(picked)} examples about other people for {k} shots")
    return picked


@torch.no_grad()
def answer_and_score(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: EvalConfig,
    progress: bool = True,
    candidates: Sequence[Sequence[str]] | None = None,
    dist: Dist | None = None,
    prefixes: Sequence[str] | None = None,
) -> tuple[list[str], list[list[CandidateScore]] | None]:
    """Greedy continuations of `prompts` and, with `candidates` (one list per prompt), the
    log-probability of each candidate answer after its prompt (see `elusive.evaluation.probes`).

    Prompts run in batches left-padded to their longest prompt, in order of token length (less
    padding); results come back in the order given. A row stops at EOS, once its answer is
    complete (`answer_complete`: the tokens after that would not change `cut_answer`), or after
    ``config.max_new_tokens`` (`greedy_tokens`). The candidates are scored on the key/value
    cache of the prompt pass that the generation continues, so they cost no prompt pass of
    their own.

    `prefixes[i]` (default: none) is a text prompt i starts with, such as its solved examples
    (`prompt_parts`): the prompts with the same prefix form a group, the tokens they all start
    with are its shared prefix, and batches take the groups one after the other (each in order
    of its prompts' own length), so a batch spans few groups and there are as many batches as
    without prefixes. A batch runs its distinct shared prefixes once, in one forward pass, into
    a key/value cache (`_prefix_cache`; the next batch reuses it when it shares the same ones)
    that each row continues: laid out as [padding][its prefix][padding][its own tokens], every
    padding masked and positions counted over the real tokens, so each row's positions are those
    of its prompt alone, and a question costs its own tokens only. The answers and scores are
    the ones of the prompts run whole, up to float rounding.

    Every process of `dist` (default: this one alone, which runs every batch) runs its share
    of these batches (`elusive.parallel`, balanced by tokens) and gets everyone's results: a
    collective, so all its processes must call it alike. Each batch holds the prompts it holds
    in one process, and left padding makes a row's numbers depend on its batch, so the results
    are the ones one process gives, whatever the number of processes.
    """
    from tqdm.auto import tqdm

    from elusive.evaluation.probes import (
        candidate_ids,
        left_pad,
        model_cache,
        pad_id,
        prompt_pass,
        score_after_prompts,
    )
    from elusive.models import input_device, resolve_mixed_precision

    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    cand_ids = candidate_ids(tokenizer, candidates) if candidates is not None else None
    groups: dict[str, list[int]] = {}  # prefix -> its prompts, in the order given
    keys = prefixes if prefixes is not None else [""] * len(prompts)
    for i, prefix in zip(range(len(prompts)), keys, strict=True):
        groups.setdefault(prefix, []).append(i)
    head: list[tuple[int, ...]] = [()] * len(prompts)  # prompt -> the tokens its group shares
    for prefix, members in groups.items():
        length = _shared_length(tokenizer, prefix, [encoded[i] for i in members])
        for i in members:
            head[i] = tuple(encoded[i][:length])
    # Group after group, each in order of its own length: a batch spans few groups, and there
    # are as many batches (and decoding steps) as without groups.
    group_of = {i: g for g, members in enumerate(groups.values()) for i in members}
    order = sorted(range(len(prompts)), key=lambda i: (group_of[i], len(encoded[i]) - len(head[i])))
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    texts: list[str] = [""] * len(prompts)
    scores: list[list[CandidateScore]] = [[] for _ in prompts]
    dist = dist or Dist.single()
    costs = [  # each shared prefix once, plus the tokens each row holds once generated
        sum(len(h) for h in {head[i] for i in b})
        + len(b) * (max(len(encoded[i]) - len(head[i]) for i in b) + config.max_new_tokens)
        for b in batches
    ]
    batches = [batches[b] for b in dist.share(costs)]
    progress = progress and dist.is_main
    device = input_device(model)
    # bf16 autocast: greedy QA on the 0.5B pack ran ~2x faster on an AVX512-BF16 CPU
    # (docs/benchmarks.md).
    autocast = _AUTOCAST[resolve_mixed_precision(config.mixed_precision, device)]
    prefix = None  # the last batch's distinct shared prefixes and (ids, mask, cache) of them
    for batch in tqdm(batches, desc="generate", disable=not progress):
        own = [encoded[i][len(head[i]) :] for i in batch]
        ids, mask = left_pad(own, pad_id(tokenizer))  # [batch, own width]
        distinct = list(dict.fromkeys(head[i] for i in batch if head[i]))
        rows_cache = None  # no shared tokens: the prompts run whole
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            if distinct:
                if prefix is None or prefix[0] != distinct:  # the same ones: the same numbers
                    prefix = distinct, _prefix_cache(model, distinct, pad_id(tokenizer))
                ids, mask, rows_cache = _after_prefix(
                    *prefix[1], [head[i] for i in batch], ids, mask
                )
            out = prompt_pass(model, ids, mask, rows_cache)  # [batch, width]: shared included
            logits, cache = out.logits[:, -1], model_cache(out)  # [batch, vocab]; the prompts'
            if cand_ids is not None:  # on copies of the prompts' cache, before decoding extends it
                batch_scores = score_after_prompts(
                    model, logits, cache, mask, [cand_ids[i] for i in batch]
                )
                for i, score in zip(batch, batch_scores, strict=True):
                    scores[i] = score
            generated = greedy_tokens(model, tokenizer, logits, cache, mask, config.max_new_tokens)
        for i, tokens in zip(batch, generated, strict=True):
            texts[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    for i, text, score in dist.gather([(i, texts[i], scores[i]) for b in batches for i in b]):
        texts[i], scores[i] = text, score
    return texts, (scores if cand_ids is not None else None)


@torch.no_grad()
def greedy_tokens(
    model, tokenizer, logits: torch.Tensor, cache, mask: torch.Tensor, max_new_tokens: int
) -> list[list[int]]:
    """Greedy continuations of a batch of left-padded prompts the model has run: `logits`
    [batch, vocab] their last position's, `cache` their keys and values (extended here), `mask`
    [batch, width] their attention mask. Each row takes the most likely token until EOS (kept,
    as the last), until its answer is complete (`answer_complete`: the tokens after that would
    not change `cut_answer`) or for `max_new_tokens`. A row that stops leaves the batch, its
    rows dropped from the cache, so each step computes only the rows still going (answers of
    unequal length waste no steps). No sampling, penalty or other setting of the model's
    generation config applies: the next token is the argmax."""
    from elusive.evaluation.probes import cache_argument
    from elusive.models import input_device

    device = input_device(model)
    new: list[list[int]] = [[] for _ in range(len(mask))]
    going = list(range(len(mask)))  # the batch rows still going: the cache's rows, in order
    mask = mask.to(device)
    position = mask.sum(-1)  # [going]: a row's next position, after its real prompt tokens
    for step in range(max_new_tokens):
        token = logits.argmax(-1)  # [going]
        keep = []
        for k, (row, t) in enumerate(zip(going, token.tolist(), strict=True)):
            new[row].append(t)
            if t != tokenizer.eos_token_id and not answer_complete(
                tokenizer.decode(new[row], skip_special_tokens=True)
            ):
                keep.append(k)
        if not keep or step + 1 == max_new_tokens:
            break
        if len(keep) < len(going):
            cache.batch_select_indices(torch.tensor(keep))  # on the CPU, as in `probes`
            index = torch.tensor(keep, device=device)
            going = [going[k] for k in keep]
            token, mask, position = token[index], mask[index], position[index]
        mask = torch.cat([mask, mask.new_ones((len(going), 1))], dim=1)  # [going, width + 1]
        logits = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            use_cache=True,
            **cache_argument(model, cache),
        ).logits[:, -1]  # [going, vocab]
        position = position + 1
    return new


def _shared_length(tokenizer, prefix: str, members: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt of a group (`members`, their token ids) shares:
    those of `prefix` (special tokens included) that each of them starts with, since the
    prefix's last token may merge with the text after it. One token of each prompt stays its
    own, so that every row has a last position to predict from. 0 for an empty prefix."""
    if not prefix:
        return 0
    head = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    length = len(head)
    for ids in members:
        length = min(length, len(ids) - 1)
        length = next((t for t in range(length) if head[t] != ids[t]), length)
    return length


def _prefix_cache(model, prefixes: Sequence[Sequence[int]], pad: int):
    """(ids, mask, cache) of the distinct shared prefixes of a batch, one row each, left-padded
    to the longest ([prefixes, longest] ids and mask) and run in one forward pass, positions
    counted from each row's first real token: what their prompts compute first when run whole."""
    from elusive.evaluation.probes import left_pad, model_cache, prompt_pass

    ids, mask = left_pad(prefixes, pad)  # [prefixes, longest]
    return ids, mask, model_cache(prompt_pass(model, ids, mask))  # only the cache is read


def _after_prefix(
    prefix_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    prefix_cache,
    heads: Sequence[tuple[int, ...]],
    ids: torch.Tensor,
    mask: torch.Tensor,
):
    """A batch continuing the shared prefixes of `_prefix_cache` (rows in the order they were
    given: their distinct `heads`, ``()`` for a row that shares none): (ids, mask) [batch,
    longest prefix + width], each row [padding][its prefix][padding][its own left-padded
    tokens] with every padding masked (`prompt_pass` counts positions over the mask's ones, so
    a row's positions are those of its prompt alone), and a copy of `prefix_cache` with each
    row's prefix (`prompt_pass` runs only the tokens after the cache's)."""
    import copy

    distinct = list(dict.fromkeys(h for h in heads if h))
    rows = torch.tensor([distinct.index(h) if h else 0 for h in heads])  # [batch]
    sharing = torch.tensor([bool(h) for h in heads], dtype=mask.dtype)[:, None]  # [batch, 1]
    cache = copy.deepcopy(prefix_cache)  # generate extends the cache it is given
    cache.batch_select_indices(rows)  # indices on the CPU, as in `elusive.evaluation.probes`
    head_ids, head_mask = prefix_ids[rows], prefix_mask[rows] * sharing  # [batch, longest]
    return torch.cat([head_ids, ids], dim=1), torch.cat([head_mask, mask], dim=1), cache


def generate_continuations(
    model, tokenizer, prompts: Sequence[str], config: EvalConfig, progress: bool = True
) -> list[str]:
    """Greedy continuations of `prompts` (see `answer_and_score`)."""
    return answer_and_score(model, tokenizer, prompts, config, progress)[0]


@dataclass
class EvalResult:
    """Scores per field (plus ``overall``) and one prediction row per question."""

    scores: dict[str, FieldScore]
    predictions: list[dict]
    warnings: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What makes some scores less than they seem, by kind (see `evaluate_qa`); metrics.json
    keeps it under ``warnings``."""
    baseline: EvalResult | None = None
    """The base model's result on the same questions, untrained, where `evaluate_model` was
    given a `baseline`."""


def score_predictions(items: Sequence[QAItem], outputs: Sequence[str]) -> list[dict]:
    """One prediction row per item: its raw output cut to the answer, with EM and F1 against
    the item's gold answers."""
    rows = []
    for item, output in zip(items, outputs, strict=True):
        answer = cut_answer(output)
        em, f1 = best_scores(answer, item.answers)
        rows.append(
            {
                "id": item.id,
                "source_id": item.source_id,
                "field": item.field,
                "question": item.question,
                "answers": list(item.answers),
                "output": output,
                "prediction": answer,
                "em": em,
                "f1": f1,
            }
        )
    return rows


def evaluate_qa(
    model,
    tokenizer,
    items: Sequence[QAItem],
    config: EvalConfig | None = None,
    pool: Sequence[QAItem] | None = None,
    progress: bool = True,
    dist: Dist | None = None,
) -> EvalResult:
    """Closed-book QA (prompt, generate greedily, cut, score) and, with ``config.probes``, the
    knowledge probes: ``choice`` and ``logprob`` after the QA prompt, and for items with a
    cloze prompt its greedy ``cloze_em``/``cloze_f1`` and ``cloze_choice``/``cloze_logprob``.
    Both choices use the same distractors. The processes of `dist` (default: this one alone)
    share the questions (see `answer_and_score`).

    An item without a question (a span-cloze probe, `elusive.corpus.cloze`) gets only the cloze
    metrics: its prediction row has no ``em``/``f1``/``choice``/``logprob``, so a field of such
    probes is scored by its cloze metrics alone and nothing warns of the QA ones. Without
    ``config.probes`` such items are left out (counted under ``probe_only``): nothing is asked.

    The result's `warnings` (each also a DroppedDataWarning, from the main process of `dist`)
    record ``over_context``, questions whose prompt needs more than the model's context
    (`context_overflow`); ``fewer_distractors``, questions with fewer than ``config.choices``
    distractors (`elusive.evaluation.probes.distractor_shortage`); ``probe_only``, the probes left
    out; and ``missing_metrics``, per field a metric no question has a value for, which the scores
    leave out (`unmeasured`)."""
    from elusive.evaluation.probes import candidates, distractor_shortage, judge, pick_distractors

    config = config or EvalConfig()
    dist = dist or Dist.single()
    found: dict[str, Any] = {}
    if not config.probes and any(item.question is None for item in items):
        found["probe_only"] = sum(item.question is None for item in items)
        items = [item for item in items if item.question is not None]
    qa = [i for i, item in enumerate(items) if item.question is not None]
    shots = [item for item in (pool if pool is not None else items) if item.question is not None]
    parts = prompt_parts([items[i] for i in qa], config, shots)
    prompts = [examples + asked for examples, asked in parts]
    asked = [i for i, item in enumerate(items) if item.cloze is not None]
    clozes = {i: [items[i].cloze] for i in asked} if config.probes else {}
    qa_prompts = dict(zip(qa, prompts, strict=True))
    asks = [
        [*([qa_prompts[i]] if i in qa_prompts else []), *clozes.get(i, [])]
        for i in range(len(items))
    ]
    if overflow := context_overflow(model, tokenizer, items, asks, config.max_new_tokens):
        found["over_context"] = overflow
    cands = None  # without probes: the greedy answers alone
    if config.probes:
        distractors = pick_distractors(items, config.choices, config.probe_seed)
        cands = candidates(items, distractors)
        if short := distractor_shortage(items, distractors, config.choices):
            found["fewer_distractors"] = {"choices": config.choices, "fields": short}
    rows: list[dict] = [
        {
            "id": item.id,
            "source_id": item.source_id,
            "field": item.field,
            "answers": list(item.answers),
        }
        for item in items
    ]
    if qa:
        outputs, scores = answer_and_score(
            model, tokenizer, prompts, config, progress,
            None if cands is None else [cands[i] for i in qa], dist,
            prefixes=[examples for examples, _ in parts],
        )  # fmt: skip
        for i, row in zip(qa, score_predictions([items[i] for i in qa], outputs), strict=True):
            rows[i] = row
        if config.probes:
            qa_items = [items[i] for i in qa]
            wrong = [distractors[i] for i in qa]
            for i, probed in zip(qa, judge(qa_items, wrong, scores), strict=True):
                rows[i].update(probed)
    if not config.probes:
        return _result(rows, found, dist)
    for row, wrong in zip(rows, distractors, strict=True):
        row["distractors"] = list(wrong)

    if asked:
        cloze_items = [items[i] for i in asked]
        wrong = [distractors[i] for i in asked]
        outputs, scores = answer_and_score(
            model, tokenizer, [item.cloze for item in cloze_items], config, progress,
            [cands[i] for i in asked], dist,
        )  # fmt: skip
        probed = judge(cloze_items, wrong, scores)
        for i, item, output, probe in zip(asked, cloze_items, outputs, probed, strict=True):
            answer = cut_answer(output)
            em, f1 = best_scores(answer, item.answers)
            rows[i].update(
                cloze=item.cloze,
                cloze_output=output,
                cloze_prediction=answer,
                cloze_em=em,
                cloze_f1=f1,
                **{f"cloze_{name}": value for name, value in probe.items()},
            )
    return _result(rows, found, dist)


# Why a metric can have no value for any question of a field (`unmeasured`).
_NO_DISTRACTOR = "no question there has a distractor (no other distinct answer in its field)"
_WHY_MISSING = {"choice": _NO_DISTRACTOR, "cloze_choice": _NO_DISTRACTOR}


def context_overflow(
    model, tokenizer, items: Sequence[QAItem], prompts: Sequence[Sequence[str]], new_tokens: int
) -> dict[str, Any]:
    """The questions some prompt of which (`prompts[i]` are item i's: QA with its shots, cloze)
    needs, with `new_tokens` answer tokens, more positions than the model's context
    (``max_position_embeddings``): ``context``, ``longest`` (tokens needed), and per field and
    ``overall`` the number of such questions. Empty when all fit or the model names no context.

    Counted, not refused: the context is known only once a model is loaded (in a run, after
    training), and one long question should not cost every other question its score; the
    count says how many answers came from positions the model never learnt."""
    model_config = getattr(model, "config", None)
    if model_config is None:
        return {}
    limit = getattr(model_config.get_text_config(), "max_position_embeddings", None)
    if limit is None:
        return {}
    flat = [prompt for asks in prompts for prompt in asks]
    lengths = iter(len(ids) + new_tokens for ids in tokenizer(flat)["input_ids"])
    needs = [max(next(lengths) for _ in asks) for asks in prompts]
    fields: dict[str, int] = {}
    for item, need in zip(items, needs, strict=True):
        if need > limit:
            fields[item.field] = fields.get(item.field, 0) + 1
    if not fields:
        return {}
    fields["overall"] = sum(fields.values())
    return {"context": limit, "longest": max(needs), "fields": fields}


def _result(rows: list[dict], found: dict[str, Any], dist: Dist) -> EvalResult:
    """The scores of `rows` with the `found` warnings plus the metrics missing from them; each
    warning is shown once, by the main process of `dist` (the processes that share the
    questions)."""
    scores = aggregate(rows)
    if missing := unmeasured(rows):
        found["missing_metrics"] = {
            key: {m: _WHY_MISSING.get(m, "no question there has a value") for m in names}
            for key, names in missing.items()
        }
    if found and dist.is_main:
        asked = sum(1 for row in rows if row.get("question") is not None)
        noun = "questions" if asked == len(rows) else "probes" if not asked else "items"
        for line in _warning_lines(found, len(rows), noun):
            warnings.warn(line, DroppedDataWarning, stacklevel=3)
    return EvalResult(scores, rows, found)


def _warning_lines(found: dict[str, Any], n: int, noun: str = "questions") -> list[str]:
    """One line per kind of `found` warning (one per metric for missing ones), counting
    `noun` (questions, probes, or items where both are evaluated) out of the `n` evaluated."""
    lines = []
    if over := found.get("over_context"):
        fields = over["fields"]
        lines.append(
            f"{fields['overall']} of {n} {noun} need more than the model's {over['context']} "
            f"positions (prompt, shots included, plus the answer's new tokens; the longest "
            f"{over['longest']}): their answers come from positions it never learnt"
        )
    if skipped := found.get("probe_only"):
        lines.append(
            f"{skipped} probes without a question are left out: evaluate.probes is off, and "
            "a probe is only its cloze"
        )
    if short := found.get("fewer_distractors"):
        fields, k = short["fields"], short["choices"]
        per_field = ", ".join(f"{f} {v['questions']}" for f, v in fields.items() if f != "overall")
        fewest = fields["overall"]["fewest"]
        lines.append(
            f"{fields['overall']['questions']} of {n} {noun} get fewer distractors than the "
            f"{k} asked (as few as {fewest}; {per_field}): their choice's chance is above "
            f"1/{k + 1}" + ("; those with none have no choice" if fewest == 0 else "")
        )
    by_metric: dict[tuple[str, str], list[str]] = {}
    for key, reasons in found.get("missing_metrics", {}).items():
        for metric, why in reasons.items():
            by_metric.setdefault((metric, why), []).append(key)
    for (metric, why), keys in by_metric.items():
        lines.append(f"{metric} is left out of the scores of {', '.join(keys)}: {why}")
    return lines


def load_for_eval(
    spec: str,
    adapter: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    device_map: Any = None,
    max_memory: dict | None = None,
    quantize: str = "no",
):
    """(model, tokenizer) for evaluation: the base model with the LoRA adapter merged in.
    An adapter trained on another base model is refused (`check_adapter_base`). `device_map`
    and `max_memory` dispatch the model over several devices (`elusive.models.load_model`).

    ``quantize="4bit"`` loads the base as QLoRA trains it (`elusive.models.load_4bit`) with the
    adapter beside its 4-bit layers, not merged: merging would round the sum to 4 bits again.
    This measures a QLoRA adapter where it was trained; the default, the adapter merged into
    the unquantized base, is the model `elusive export` writes."""
    from elusive.models import (
        ModelSpecError,
        check_adapter_base,
        load_4bit,
        load_model,
        offloaded,
        quiet_peft,
    )

    check_quantize(quantize, device_map)
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelSpecError(
                f"adapter {str(adapter)!r}: no adapter_config.json in that folder "
                "(a --full run's epoch folder is a model: pass it as --model)"
            )
        check_adapter_base(adapter, spec)
    if quantize == "4bit":
        model, tokenizer = load_4bit(spec, dtype)
    else:
        model, tokenizer = load_model(
            spec, dtype=dtype, device_map=device_map, max_memory=max_memory
        )
    if adapter is not None:
        from peft import PeftModel

        if offloaded(model):
            # peft 0.21 cannot add LoRA weights to offloaded ones: it fails on them, and
            # transformers' own `load_adapter` gives NaN logits
            raise ModelSpecError(
                f"adapter {str(adapter)!r}: a LoRA adapter cannot be merged into weights "
                f"offloaded to the CPU or disk (device map {model.hf_device_map}); give "
                "max_memory that holds the model on the GPUs, or train with --full"
            )

        with quiet_peft():
            model = PeftModel.from_pretrained(model, adapter)
        if quantize == "no":
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def check_quantize(quantize: str, device_map: Any = None) -> None:
    """Refuse a `load_for_eval` quantization that is not one of `QUANTIZE`, or 4bit without
    bitsandbytes or with a device map (4-bit weights load onto one device)."""
    from elusive.options import QUANTIZE, check_bitsandbytes

    if quantize not in QUANTIZE:
        raise ElusiveError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if quantize == "4bit":
        check_bitsandbytes("--quantize 4bit", ElusiveError)
        if device_map is not None:
            raise ElusiveError("--quantize 4bit loads the model on one device: no --device-map")


def write_eval(out_dir: str | Path, result: EvalResult, meta: dict) -> tuple[Path, Path]:
    """Write ``metrics.json`` (meta, scores and the result's warnings, ``{}`` when none) and
    ``predictions.jsonl`` into `out_dir`."""
    out = Path(out_dir)
    scores = {k: {**v.present(), "n": v.n} for k, v in result.scores.items()}
    body = {**meta, "scores": scores, "warnings": result.warnings}
    metrics = atomic_write_text(out / "metrics.json", json.dumps(body, indent=2) + "\n")
    return metrics, write_jsonl(out / "predictions.jsonl", result.predictions)


def read_eval(out_dir: str | Path) -> EvalResult:
    """The result `write_eval` wrote into `out_dir`: its scores, predictions and warnings."""
    from elusive.io import iter_jsonl, read_json

    out = Path(out_dir)
    body = read_json(out / "metrics.json")
    # each field's measured metrics and n (`write_eval`); QA EM and F1 are None for probes alone
    scores = {k: FieldScore(**{"em": None, "f1": None, **v}) for k, v in body["scores"].items()}
    predictions = [row for _, row in iter_jsonl(out / "predictions.jsonl")]
    return EvalResult(scores, predictions, body.get("warnings", {}))


def store_for_precision(model, config: EvalConfig) -> str:
    """The mixed precision `config` resolves to on `model`'s device; under autocast, `model`'s
    linear layers are stored in its dtype once (`elusive.models.store_for_autocast`: the same
    bits without a weight cast at every decoding step; on a 2-core AMX Xeon, 0.5B pack, 60
    probed 5-shot questions: 60 -> 49 s), for a model that only evaluation runs."""
    from elusive.models import input_device, resolve_mixed_precision, store_for_autocast

    precision = resolve_mixed_precision(config.mixed_precision, input_device(model))
    if precision != "no":
        store_for_autocast(model, _AUTOCAST[precision])
    return precision


def evaluate_checkpoint(
    out_dir: str | Path,
    spec: str,
    adapter: str | Path | None,
    items: Sequence[QAItem],
    config: EvalConfig,
    meta: dict,
    dtype: torch.dtype = torch.float32,
    *,
    pool: Sequence[QAItem] | None = None,
    progress: bool = True,
    dist: Dist | None = None,
    write: bool = True,
    device_map: Any = None,
    max_memory: dict | None = None,
    quantize: str = "no",
) -> EvalResult:
    """Evaluate one checkpoint into one folder, for every caller (`evaluate_model`, the
    pipeline's evaluate stage): load `spec` with `adapter` (`load_for_eval`), answer `items`
    (`evaluate_qa`: `pool`, and the processes of `dist` share the questions; under autocast the
    model's linear layers stored in its dtype, `store_for_precision`) and, where
    `write`, write metrics.json (with `meta`) and predictions.jsonl into `out_dir`
    (`write_eval`)."""
    model, tokenizer = load_for_eval(
        spec, adapter, dtype, device_map=device_map, max_memory=max_memory, quantize=quantize
    )
    if quantize == "no" and device_map is None:
        store_for_precision(model, config)
    result = evaluate_qa(model, tokenizer, items, config, pool, progress, dist)
    if write:
        write_eval(out_dir, result, meta)
    return result


def scores_table(scores: dict[str, FieldScore], title: str = "closed-book QA"):
    """A rich table laid out like the paper's Table 1: a column per field, a row per metric
    (QA EM and F1, then each probe that was run), and n."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in scores:
        table.add_column(name, justify="right")
    measured = {m for s in scores.values() for m in s.present()}
    for metric in (m for m in METRICS if m in measured):
        values = (_fmt(s.present().get(metric)) for s in scores.values())
        table.add_row(LABELS.get(metric, metric), *values)
    table.add_row("n", *(str(s.n) for s in scores.values()))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def evaluate_model(
    spec: str,
    qa: str | Path | Sequence[QAItem],
    out_dir: str | Path,
    adapter: str | Path | None = None,
    config: EvalConfig | None = None,
    dtype: torch.dtype = torch.float32,
    shots_from: str | Path | None = None,
    progress: bool = True,
    *,
    device_map: Any = None,
    max_memory: dict | None = None,
    quantize: str = "no",
    baseline: str | Path | None = None,
    dist: Dist | None = None,
) -> EvalResult:
    """Load a model (+ adapter), answer the questions of `qa`, write metrics and predictions;
    `device_map`, `max_memory` and `quantize` as in `load_for_eval`. The processes of `dist`
    (default: those of `accelerate launch`, this one alone when not launched) share the
    questions and the main one writes.

    `baseline` (a model spec: the adapter's base, ``elusive evaluate --baseline``) is evaluated
    too, untrained, on the same questions with the same options, into OUT_DIR/untrained/ (the
    same two files); its result is the returned one's ``baseline``. Both folders are checked
    before any work."""
    from elusive.corpus.records import read_qa
    from elusive.io import check_apart, check_out_dir

    dist = dist or Dist.launched()
    config = config or EvalConfig()
    config.validate()
    check_quantize(quantize, device_map)
    outs = [Path(out_dir)] + ([Path(out_dir, UNTRAINED)] if baseline is not None else [])
    given = {"--qa": qa if isinstance(qa, (str, Path)) else None, "--shots-from": shots_from}
    for out in outs:
        check_out_dir(out, ("metrics.json", "predictions.jsonl"))
        check_apart([out / n for n in ("metrics.json", "predictions.jsonl")], given)
    items = read_qa(qa) if isinstance(qa, (str, Path)) else list(qa)
    pool = read_qa(shots_from) if shots_from is not None else None
    evaluated = [(spec, adapter)] + ([(baseline, None)] if baseline is not None else [])
    results = []
    for out, (model_spec, model_adapter) in zip(outs, evaluated, strict=True):
        meta = {
            "model": str(model_spec),
            "adapter": None if model_adapter is None else str(model_adapter),
            "qa": str(qa) if isinstance(qa, (str, Path)) else None,
            "shots_from": None if shots_from is None else str(shots_from),
            "config": dataclasses.asdict(config),
        }
        if quantize != "no":  # only where used: an unquantized evaluation keeps its keys
            meta["quantize"] = quantize
        result = evaluate_checkpoint(
            out, model_spec, model_adapter, items, config, meta, dtype,
            pool=pool, progress=progress, dist=dist, write=dist.is_main,
            device_map=device_map, max_memory=max_memory, quantize=quantize,
        )  # fmt: skip
        results.append(result)
    if baseline is not None:
        results[0].baseline = results[1]
    return results[0]

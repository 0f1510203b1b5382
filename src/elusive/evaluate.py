"""Closed-book QA scoring: SQuAD-style exact match and word-level F1, per field and overall.

Normalisation follows SQuAD v1.1 (lowercase, drop punctuation, drop the articles a/an/the,
collapse whitespace), extended to Unicode: text is NFC-normalised first, and every Unicode
punctuation character (category P*) is deleted as well as ASCII `string.punctuation`.
Accents are kept ("José" != "Jose"). Written here because the hub metric cannot be fetched
offline.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .corpus import QAItem, atomic_write_text, write_jsonl

_ARTICLES = re.compile(r"\b(a|an|the)\b", flags=re.UNICODE)
_ASCII_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 answer normalisation (Unicode-aware, see the module docstring)."""
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(
        ch for ch in text if ch not in _ASCII_PUNCT and not unicodedata.category(ch).startswith("P")
    )
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Word-level F1 of the normalised strings. If either is empty, F1 is 1.0 when both are
    (the SQuAD v2.0 convention) and 0.0 otherwise."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_scores(prediction: str, golds: Sequence[str]) -> tuple[float, float]:
    """(EM, F1) of a prediction against several gold answers: the best of each, as SQuAD."""
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return (
        max(exact_match(prediction, g) for g in golds),
        max(f1_score(prediction, g) for g in golds),
    )


@dataclass(frozen=True)
class FieldScore:
    """Mean EM and F1 over `n` questions."""

    em: float
    f1: float
    n: int


def aggregate(rows: Iterable[tuple[str, float, float]]) -> dict[str, FieldScore]:
    """Average (field, em, f1) rows per field, plus ``overall`` over every row.

    Fields keep the order they first appear in; ``overall`` comes last.
    """
    sums: dict[str, list[float]] = {}
    for field, em, f1 in rows:
        for key in (field, "overall"):
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0] += em
            acc[1] += f1
            acc[2] += 1
    overall = sums.pop("overall", None)
    out = {k: FieldScore(em / n, f1 / n, int(n)) for k, (em, f1, n) in sums.items()}
    if overall is not None:
        em, f1, n = overall
        out["overall"] = FieldScore(em / n, f1 / n, int(n))
    return out


# --------------------------------------------------------------------------- closed-book QA
#
# A question becomes the prompt ``Question: {question}\nAnswer:`` (optionally after k solved
# examples of other people, separated by blank lines); the model continues greedily for at
# most 16 tokens and the continuation is cut to its first line and first sentence (see
# `cut_answer`) before scoring with `best_scores`.

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"
_SHOT_SEPARATOR = "\n\n"
# A period after one of these words (or after initials such as "D.C") does not end a sentence.
_ABBREVIATIONS = frozenset(
    "st mt ft dr mr mrs ms jr sr prof inc co corp ltd bros no vs etc".split()
)
_INITIALS = re.compile(r"(?:[A-Za-z]\.)*[A-Za-z]")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# Autocast dtype of each `EvalConfig.mixed_precision` ("auto" resolves to one of these).
_AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EvalConfig:
    """Closed-book QA options; the defaults are the paper's protocol (greedy, 16 new tokens)."""

    max_new_tokens: int = 16
    template: str = DEFAULT_TEMPLATE
    """Prompt of one question; must contain ``{question}`` and should end where the answer
    starts (the answer is appended after a space in k-shot examples)."""
    shots: int = 0
    """Solved examples of other people before each question (the authors used 5); 0 = off."""
    shot_seed: int = 0
    batch_size: int = 16
    mixed_precision: str = "auto"
    """Autocast of generation: no, bf16 or fp16; auto is bf16 where the model's device has native
    bf16, else no (`elusive.train.resolve_mixed_precision`)."""

    def validate(self) -> None:
        if "{question}" not in self.template:
            raise ValueError(f"prompt template must contain {{question}}, got {self.template!r}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.shots < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, shots >= 0")
        if self.mixed_precision != "auto" and self.mixed_precision not in _AUTOCAST:
            raise ValueError(
                f"mixed_precision must be auto or one of {tuple(_AUTOCAST)}, "
                f"got {self.mixed_precision!r}"
            )


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
        words = line[: match.start()].split()
        word = words[-1] if words else ""
        if match.group() == "." and (word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word)):
            continue
        return line[: match.start()].strip()
    return line.strip()


def build_prompts(
    items: Sequence[QAItem], config: EvalConfig, pool: Sequence[QAItem] | None = None
) -> list[str]:
    """One prompt per item. With ``config.shots = k``, k solved examples come first, drawn
    from `pool` (default: `items`) in an order shuffled by ``config.shot_seed``, skipping the
    asked person, one example per field before any field repeats."""
    config.validate()
    question = [config.template.format(question=q.question) for q in items]
    if not config.shots:
        return question
    order = list(pool if pool is not None else items)
    random.Random(config.shot_seed).shuffle(order)
    prompts = []
    for item, asked in zip(items, question, strict=True):
        shots = _pick_shots(order, item, config.shots)
        blocks = [config.template.format(question=s.question) + " " + s.answers[0] for s in shots]
        prompts.append(_SHOT_SEPARATOR.join([*blocks, asked]))
    return prompts


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
        raise ValueError(f"only {len(picked)} examples about other people for {k} shots")
    return picked


@torch.no_grad()
def generate_continuations(
    model, tokenizer, prompts: Sequence[str], config: EvalConfig, progress: bool = True
) -> list[str]:
    """Greedy continuations of `prompts`, in batches left-padded to their longest prompt.

    Prompts are batched in order of token length (less padding); results come back in the
    order given. Generation stops at EOS, at a newline, or after ``config.max_new_tokens``.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    from .train import resolve_mixed_precision

    encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    gen_config = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        stop_strings=["\n"],
    )
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    device = next(model.parameters()).device
    # bf16 autocast: greedy QA on the 0.5B pack ran ~2x faster on an AVX512-BF16 CPU (README).
    autocast = _AUTOCAST[resolve_mixed_precision(config.mixed_precision, device)]
    for batch in tqdm(batches, desc="generate", disable=not progress):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [batch, seq]
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, seq]
        for row, i in enumerate(batch):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=gen_config,
                tokenizer=tokenizer,
            )[:, width:]  # [batch, new]
        for row, i in enumerate(batch):
            out[i] = tokenizer.decode(generated[row], skip_special_tokens=True)
    return out


@dataclass
class EvalResult:
    """Scores per field (plus ``overall``) and one prediction row per question."""

    scores: dict[str, FieldScore]
    predictions: list[dict]


def score_predictions(items: Sequence[QAItem], outputs: Sequence[str]) -> EvalResult:
    """Cut each raw model output to its answer and score it against the item's gold answers."""
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
    return EvalResult(aggregate((r["field"], r["em"], r["f1"]) for r in rows), rows)


def evaluate_qa(
    model,
    tokenizer,
    items: Sequence[QAItem],
    config: EvalConfig | None = None,
    pool: Sequence[QAItem] | None = None,
    progress: bool = True,
) -> EvalResult:
    """Closed-book QA: prompt, generate greedily, cut, score."""
    config = config or EvalConfig()
    prompts = build_prompts(items, config, pool)
    return score_predictions(
        items, generate_continuations(model, tokenizer, prompts, config, progress)
    )


def load_for_eval(spec: str, adapter: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for evaluation: the base model with the LoRA adapter merged in."""
    from .models import ModelSpecError, load_model

    model, tokenizer = load_model(spec, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelSpecError(
                f"adapter {str(adapter)!r}: no adapter_config.json in that folder "
                "(a --full run's epoch folder is a model: pass it as --model)"
            )
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tokenizer


def write_eval(out_dir: str | Path, result: EvalResult, meta: dict) -> tuple[Path, Path]:
    """Write ``metrics.json`` (meta + scores) and ``predictions.jsonl`` into `out_dir`."""
    out = Path(out_dir)
    scores = {k: dataclasses.asdict(v) for k, v in result.scores.items()}
    metrics = atomic_write_text(
        out / "metrics.json", json.dumps({**meta, "scores": scores}, indent=2) + "\n"
    )
    return metrics, write_jsonl(out / "predictions.jsonl", result.predictions)


def scores_table(scores: dict[str, FieldScore], title: str = "closed-book QA"):
    """A rich table laid out like the paper's Table 1: a column per field, rows EM, F1, n."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in scores:
        table.add_column(name, justify="right")
    table.add_row("EM", *(f"{s.em:.2f}" for s in scores.values()))
    table.add_row("F1", *(f"{s.f1:.2f}" for s in scores.values()))
    table.add_row("n", *(str(s.n) for s in scores.values()))
    return table


def evaluate_model(
    spec: str,
    qa: str | Path | Sequence[QAItem],
    out_dir: str | Path,
    adapter: str | Path | None = None,
    config: EvalConfig | None = None,
    dtype: torch.dtype = torch.float32,
    shots_from: str | Path | None = None,
    progress: bool = True,
) -> EvalResult:
    """Load a model (+ adapter), answer the questions of `qa`, write metrics and predictions."""
    from .corpus import read_qa

    config = config or EvalConfig()
    config.validate()
    items = read_qa(qa) if isinstance(qa, (str, Path)) else list(qa)
    pool = read_qa(shots_from) if shots_from is not None else None
    model, tokenizer = load_for_eval(spec, adapter, dtype)
    result = evaluate_qa(model, tokenizer, items, config, pool, progress)
    meta = {
        "model": str(spec),
        "adapter": None if adapter is None else str(adapter),
        "qa": str(qa) if isinstance(qa, (str, Path)) else None,
        "shots_from": None if shots_from is None else str(shots_from),
        "config": dataclasses.asdict(config),
    }
    write_eval(out_dir, result, meta)
    return result

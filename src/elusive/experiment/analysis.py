"""The attention analysis of Figures 2 and 3 (the `analysis` stage of `elusive run`).

For the token just before the company value of `report.analysis_texts` fresh biographies (the
corpus's generator settings), each model's attention row (mean over layers and heads) and the
kind of token (name, date, city, ..., relation word, other) at each position, written to
report/analysis.json with what the rows were computed from: both models' fingerprints (by
content), the scoring options and the generator's settings. A change of any of them redoes it;
the report only reads the file (`elusive.experiment.summary`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from elusive.corpus.bios import SPANS
from elusive.corpus.records import Record
from elusive.experiment import layout
from elusive.experiment.runs import Run, digest
from elusive.io import read_json
from elusive.parallel import Dist

if TYPE_CHECKING:
    from elusive.scoring.attention import AttentionConfig


CATEGORIES = (*SPANS, "relation", "other")
"""What a token is: part of the name or a field value, a word of the queried sentence (the
relation words, e.g. "had a professional role at"), or anything else."""


def span_categories(record: Record, offsets: Sequence[tuple[int, int]]) -> list[str | None]:
    """The span of a biography (name or a field) that each token overlaps, or None."""
    spans = {n: record.spans[n] for n in SPANS if n in record.spans}
    return [
        next((n for n, (lo, hi) in spans.items() if start < hi and end > lo), None)
        for start, end in offsets
    ]


def token_categories(record: Record, offsets: Sequence[tuple[int, int]], query: int) -> list[str]:
    """The category of each token of a biography, for a query token in the company sentence."""
    sentence_start = record.text.rfind(". ", 0, offsets[query][0]) + 1
    end_of_query = offsets[query][1]
    return [
        span or ("relation" if start >= sentence_start and end <= end_of_query else "other")
        for span, (start, end) in zip(span_categories(record, offsets), offsets, strict=True)
    ]


def company_query_rows(
    records: Sequence[Record],
    specs: Mapping[str, str],
    config: AttentionConfig | None = None,
    device_map: Any = None,
    max_memory: dict | None = None,
    dist: Dist | None = None,
) -> dict[str, list[dict]]:
    """Per model role, the attention row of the token just before the company value of each
    biography (mean over layers and heads) with each token's category; computed and cached as
    `elusive.scoring.attention.query_attentions` does (a collective: the processes of `dist`,
    default this one alone, share the texts). `device_map` and `max_memory` dispatch each model over
    several devices (`elusive.models.load_model`).

    Returns {role: [{"weights", "eligible", "categories", "query", "tokens"}, ...]}.
    """
    from elusive.models import load_tokenizer
    from elusive.scoring.attention import AttentionConfig, query_attentions, tokenize

    config = config or AttentionConfig()
    out: dict[str, list[dict]] = {}
    for role, spec in specs.items():
        tokenizer = load_tokenizer(spec, cache_dir=config.cache_dir)
        queries = []
        for record in records:
            start = record.spans["company"][0]
            tok = tokenize(tokenizer, record.text, config.prefix)
            offsets = [tok.offsets[k] for k in tok.kept]
            queries.append(max(n for n, (s, e) in enumerate(offsets) if s < e <= start))
        texts = [record.text for record in records]
        rows = query_attentions(
            spec,
            texts,
            queries,
            config,
            progress=False,
            device_map=device_map,
            max_memory=max_memory,
            dist=dist,
        )
        out[role] = [
            {
                "weights": row.weights,
                "eligible": row.eligible,
                "categories": token_categories(record, row.offsets, row.query),
                "query": row.query,
                "tokens": row.tokens,
            }
            for record, row in zip(records, rows, strict=True)
        ]
    return out


def analysis_key(run: Run) -> dict[str, Any]:
    """What the rows are made from: the generator's settings (the corpus's, with
    ``report.analysis_texts`` biographies), both models by content (so a retrained folder at one
    path counts) and the scoring options; as read back from JSON (tuples become lists)."""
    from elusive.experiment.config import options
    from elusive.models import model_fingerprint
    from elusive.scoring.attention import AttentionConfig

    config = run.config
    bios = dataclasses.replace(config.corpus.bios, n=config.report.analysis_texts)
    specs = {"large": config.models.large, "small": config.models.small}
    key = {
        "bios": dataclasses.asdict(bios),
        "models": {role: model_fingerprint(spec) for role, spec in specs.items()},
        "attention": dataclasses.asdict(AttentionConfig(**options(config.attention))),
    }
    return json.loads(json.dumps(key))


def analysis_fingerprints(run: Run) -> dict[str, str]:
    """The analysis file with the fingerprint of its key; none for a corpus of no biographies
    (Figures 2-3 need their fields) or a run without ``models.large`` (they need both models)."""
    if run.config.corpus.bios is None or run.config.models.large is None:
        return {}
    return {layout.ANALYSIS_FILE: digest(analysis_key(run))}


def analysis_recorded(run: Run) -> dict[str, str]:
    """The fingerprint of the key an analysis file holds
    (`elusive.experiment.runs.Stage.self_recorded`): a file written before the manifest recorded it
    is known by its own key."""
    path = run.path(layout.ANALYSIS_FILE)
    if not path.is_file():
        return {}
    key = read_json(path).get("key")
    return {layout.ANALYSIS_FILE: digest(key)} if isinstance(key, dict) else {}


def write_analysis(run: Run) -> str:
    """Compute and write the analysis file unless it is there (`elusive.experiment.runs.Run.refresh`
    has removed one made from other inputs). Every process of the run (`Run.dist`) calls it and
    scores its share (`company_query_rows`); the main process writes."""
    from elusive.corpus.bios import generate_bios
    from elusive.experiment.config import options
    from elusive.io import atomic_write_text
    from elusive.scoring.attention import AttentionConfig

    config = run.config
    if config.corpus.bios is None:
        return "no biographies: no Figures 2-3"
    if config.models.large is None:
        return "no models.large: no Figures 2-3"
    path = run.path(layout.ANALYSIS_FILE)
    n = config.report.analysis_texts
    if path.exists():
        return f"{n} biographies already there"
    key = analysis_key(run)
    records = generate_bios(dataclasses.replace(config.corpus.bios, n=n))[0]
    specs = {"large": config.models.large, "small": config.models.small}
    attention = AttentionConfig(**options(config.attention))
    rows = company_query_rows(
        records,
        specs,
        attention,
        config.models.device_map,
        config.models.max_memory,
        dist=run.dist,
    )
    if run.is_main:
        atomic_write_text(path, json.dumps({"n": n, "key": key, "rows": rows}) + "\n")
    return f"{n} biographies, both models"


def read_analysis(run: Run) -> dict[str, list[dict]]:
    """The rows of the analysis file: {role: [{"weights", "eligible", "categories", "query",
    "tokens"}, ...]} (`company_query_rows`)."""
    return read_json(run.path(layout.ANALYSIS_FILE))["rows"]

"""The worked example (docs/own-corpus.md): the Markdown corpus in examples/manual/, its run
config, and the documentation pages it is linked from."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from elusive.corpus.records import read_corpus
from elusive.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MANUAL = ROOT / "examples" / "manual"
PAGES = sorted(MANUAL.glob("*.md"))

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
DATE = re.compile(rf"\b\d{{1,2}} (?:{MONTHS}) \d{{4}}\b")
UNITS = "kg|V|Ah|kW|kWh|MHz|m/s|km|m²|m³|m|nm|°C|litres|minutes|hours|days|weeks|euros"
QUANTITY = re.compile(rf"(?<![\w.,])-?\d[\d,]*(?:\.\d+)? (?:million )?(?:{UNITS})(?!\w)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def blocks(text: str) -> list[str]:
    """A page's blank-line-separated blocks: headings and paragraphs."""
    return [b.strip() for b in text.split("\n\n") if b.strip()]


def test_the_manual_is_markdown_pages_each_opening_with_a_heading():
    assert 5 <= len(PAGES) <= 6
    assert sorted(p for p in MANUAL.rglob("*") if p.is_file()) == PAGES  # nothing but pages
    for page in PAGES:
        parts = blocks(page.read_text(encoding="utf-8"))
        assert parts[0].startswith("# ") and "\n" not in parts[0], page.name
        # every section heading is followed by prose, never by another heading
        for heading, body in zip(parts[:-1], parts[1:], strict=True):
            if heading.startswith("#"):
                assert not body.startswith("#"), (page.name, heading)
        assert not parts[-1].startswith("#"), page.name


def test_the_manual_is_sized_for_minutes_of_cpu_training():
    words = sum(len(page.read_text(encoding="utf-8").split()) for page in PAGES)
    assert 1500 <= words <= 2500, words  # docs/own-corpus.md and configs/manual.yaml say ~1,700


def test_each_dated_or_measured_fact_is_stated_once():
    """A fact stated twice would let a probe's gold span be read from its other sentence, and
    two different values for one fact would contradict; dates and quantities with units are
    the facts a pattern can find, and each occurs once in the whole manual."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    dates, quantities = DATE.findall(text), QUANTITY.findall(text)
    assert len(dates) >= 10 and len(quantities) >= 40
    repeated = [v for v, n in Counter(dates + quantities).items() if n > 1]
    assert not repeated
    assert QUANTITY.findall("weighs 312 kg, runs at 48 V, lasts 21 days") == [
        "312 kg",
        "48 V",
        "21 days",
    ]


def test_read_corpus_reads_every_page_with_its_first_heading_as_title():
    records = read_corpus(MANUAL)
    assert len(records) == len(PAGES)
    by_title = {r.meta["title"]: r for r in records}
    for page in PAGES:
        parts = blocks(page.read_text(encoding="utf-8"))
        record = by_title[parts[0].removeprefix("# ")]
        for paragraph in parts[1:]:
            if not paragraph.startswith("#"):
                assert paragraph in record.text, (page.name, paragraph[:40])


def test_the_manual_config_loads_with_chunked_passages_and_no_qa_file():
    config = load_config(ROOT / "configs" / "manual.yaml")
    assert config.corpus.path == "examples/manual" and (ROOT / config.corpus.path).is_dir()
    assert config.corpus.chunk == 128 and config.corpus.qa is None
    assert (config.models.small, config.models.trained) == ("qwen2.5-coder-0.5b", ["small"])
    assert config.augment.policies == ["none", "contrast"]
    assert config.report.baselines == ["none", "untrained"]
    assert len(config.seeds) == 1 and config.out == "runs/manual"


def relative_links(page: Path) -> list[Path]:
    """The files that `page`'s Markdown links name, web addresses left out."""
    text = page.read_text(encoding="utf-8")
    return [(page.parent / t).resolve() for t in LINK.findall(text) if "://" not in t]


def test_every_page_the_docs_index_links_exists_and_every_page_is_listed():
    index = ROOT / "docs" / "index.md"
    links = relative_links(index)
    assert (ROOT / "docs" / "own-corpus.md").resolve() in links
    missing = [str(p.relative_to(ROOT)) for p in links if not p.exists()]
    assert not missing
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")} - {index.resolve()}
    assert not sorted(str(p.relative_to(ROOT)) for p in pages - set(links))


def test_the_worked_example_page_links_only_to_what_exists():
    for page in (ROOT / "docs" / "own-corpus.md", ROOT / "README.md"):
        missing = [str(p) for p in relative_links(page) if not p.exists()]
        assert not missing, page.name
    assert (ROOT / "docs" / "own-corpus.md").resolve() in relative_links(ROOT / "README.md")
    assert len((ROOT / "README.md").read_bytes()) <= 12_000

"""Figure 1: token distances of the fields from the name, and the PNG."""

from __future__ import annotations

from elusive.bios import FIELDS, BiosConfig, generate_bios
from elusive.figures import plot_accuracy_vs_distance
from elusive.metrics import FieldScore
from elusive.models import load_model
from elusive.report import field_token_distances


def test_field_distances_by_hand_and_in_field_order(tiny_model_dir):
    _, tok = load_model(tiny_model_dir)
    records = generate_bios(BiosConfig(n=6, seed=2))[0]
    distances = field_token_distances(records, tok)
    assert list(distances) == list(FIELDS) and all(len(d) == 6 for d in distances.values())
    for i, record in enumerate(records):
        for f in FIELDS:
            # Reference: tokenize the words between the name and the value on their own (the
            # space before the value belongs to its first token); the value token is one more.
            between = record.text[record.spans["name"][1] : record.spans[f][0] - 1]
            n_between = len(tok(between, add_special_tokens=False)["input_ids"])
            assert distances[f][i] == n_between + 1
        row = [distances[f][i] for f in FIELDS]
        assert row == sorted(row) and len(set(row)) == len(row)  # the paper's order: increasing


def test_figure1_png(tmp_path):
    scores = {f: FieldScore(1.0 - i / 5, 1.0 - i / 6, 10) for i, f in enumerate(FIELDS)}
    out = plot_accuracy_vs_distance(
        {f: [5 * i + 4, 5 * i + 6] for i, f in enumerate(FIELDS)}, {"tiny": scores},
        tmp_path / "fig" / "figure1.png",
    )  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["figure1.png"]  # no temp file left


def test_figures_colour_every_token_category_in_the_report_order():
    from elusive.figures import COLOURS
    from elusive.report import CATEGORIES

    assert tuple(COLOURS) == CATEGORIES

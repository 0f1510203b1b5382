"""The scores file format (`elusive.scoring.scores`): what `elusive attention` writes, read back."""

from __future__ import annotations

import json

import pytest

from elusive.options import AttentionError
from elusive.scoring.scores import TextScores, rank_desc, read_scores, write_scores


def test_scores_files_round_trip_and_bad_files_fail(tmp_path):
    row = TextScores(
        id="p0",
        text_sha256="ab",
        tokens=["Ava", " ."],
        offsets=[(0, 3), (3, 5)],
        eligible=[True, False],
        scores={"large": [0.5, 0.1], "small": [0.25, 0.2]},
        contrast=[0.25, -0.1],
        rank=[0, -1],
    )
    manifest = {"models": {}, "corpus": "c", "prefix": "", "align": "tokens", "trained": "small"}
    write_scores(tmp_path, manifest, [row])
    assert read_scores(tmp_path) == [row]
    single = TextScores("p1", "cd", ["A"], [(0, 1)], [True], {"model": [0.3]}, None, [0])
    write_scores(tmp_path, manifest, [single])
    assert "contrast" not in (tmp_path / "scores.jsonl").read_text()
    assert read_scores(tmp_path) == [single]
    bad = single.to_json() | {"rank": [0, 1]}
    (tmp_path / "scores.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(AttentionError, match=r"scores.jsonl:1: field 'rank' has 2 items"):
        read_scores(tmp_path)
    with pytest.raises(AttentionError, match="manifest.json: no such file"):
        read_scores(tmp_path / "nowhere")


def test_rank_desc_ranks_the_eligible_from_the_highest_ties_by_position():
    assert rank_desc([0.1, 0.5, 0.3, 0.9], [True, True, True, False]) == [2, 0, 1, -1]
    assert rank_desc([0.2, 0.2], [True, True]) == [0, 1]

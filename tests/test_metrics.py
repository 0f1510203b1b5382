from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elusive.metrics import aggregate, best_scores, exact_match, f1_score, normalize_answer


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("The Walt Disney Company", "walt disney company"),
        ("  New   York, NY. ", "new york ny"),
        ("an apple a day", "apple day"),
        ("theater", "theater"),  # an article only as a whole word
        ("Smith-Jones", "smithjones"),  # punctuation is deleted, as in SQuAD
        ("«José» — Müller!", "josé müller"),  # Unicode punctuation goes, accents stay
        ("Cafe\u0301", "café"),  # NFC: decomposed and composed forms agree
        ("", ""),
    ],
)
def test_normalize(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_ignores_case_punctuation_articles():
    assert exact_match("the University of Chicago.", "University of Chicago") == 1.0
    assert exact_match("University of Chicago", "Chicago University") == 0.0


def test_f1_hand_worked():
    # pred: [january, 5, 1990], gold: [january, 15, 1990] -> 2 common, P = R = 2/3
    assert f1_score("January 5, 1990", "January 15, 1990") == pytest.approx(2 / 3)
    # pred 4 tokens, gold 2, both gold tokens present -> P = 1/2, R = 1, F1 = 2/3
    assert f1_score("Dairy Queen and Burger", "Dairy Queen") == pytest.approx(2 / 3)
    # repeated tokens count by multiplicity: pred [new, new], gold [new, york] -> 1 common
    assert f1_score("new new", "new york") == pytest.approx(0.5)
    assert f1_score("Microsoft", "Apple") == 0.0


def test_empty_answers():
    assert exact_match("", "") == 1.0
    assert f1_score("", "") == 1.0
    assert f1_score("", "Apple") == 0.0
    assert f1_score("the", "Apple") == 0.0  # normalises to empty
    assert exact_match("", "Apple") == 0.0


def test_best_over_several_golds():
    assert best_scores("Denver Broncos", ["Broncos", "Denver Broncos"]) == (1.0, 1.0)
    em, f1 = best_scores("the Broncos", ["Denver Broncos", "Carolina Panthers"])
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        best_scores("x", [])


def test_aggregate_per_field_and_overall():
    rows = [("date", 1.0, 1.0), ("date", 0.0, 0.5), ("company", 1.0, 1.0)]
    scores = aggregate({"field": f, "em": em, "f1": f1} for f, em, f1 in rows)
    assert list(scores) == ["date", "company", "overall"]
    assert scores["date"].em == 0.5 and scores["date"].f1 == 0.75 and scores["date"].n == 2
    assert scores["overall"].em == pytest.approx(2 / 3) and scores["overall"].n == 3
    assert aggregate([]) == {}
    assert scores["date"].choice is None and "choice" not in scores["date"].present()


def test_aggregate_averages_each_probe_over_the_rows_that_have_it():
    rows = [
        {"field": "date", "em": 0.0, "f1": 0.0, "choice": 1.0, "cloze_em": 1.0},
        {"field": "date", "em": 1.0, "f1": 1.0, "choice": 0.0},  # no cloze prompt
        {"field": "date", "em": 0.0, "f1": 0.0, "choice": None, "cloze_em": 0.0},
    ]
    score = aggregate(rows)["date"]
    assert score.n == 3 and score.em == pytest.approx(1 / 3)
    assert score.choice == 0.5 and score.cloze_em == 0.5
    assert list(score.present()) == ["em", "f1", "choice", "cloze_em"]


# --------------------------------------------------------------------------- exact numbers
#
# Properties that pin EM and F1 to their definitions, over generated answers.


PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=200)
WORDS = st.lists(st.sampled_from(["new", "york", "the", "Paris", "a", "1990", "José"]), max_size=6)


@PROPERTY
@given(
    pred=WORDS,
    gold=WORDS,
    sep=st.sampled_from([" ", ", ", " - ", "\t"]),
    end=st.sampled_from(["", ".", "?!"]),
)
def test_f1_is_the_harmonic_mean_of_word_precision_and_recall(pred, gold, sep, end):
    prediction, answer = sep.join(pred) + end, " ".join(gold)
    p = [w.lower() for w in pred if w.lower() not in ("a", "an", "the")]
    g = [w.lower() for w in gold if w.lower() not in ("a", "an", "the")]
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g:
        expected = float(p == g)
    else:
        expected = 2 * common / (len(p) + len(g))  # = 2PR / (P + R), 0 without common words
    assert f1_score(prediction, answer) == pytest.approx(expected)
    assert f1_score(answer, prediction) == pytest.approx(expected)  # symmetric
    assert exact_match(prediction, answer) == float(p == g)
    assert best_scores(prediction, [answer, "zzz"]) == (float(p == g), pytest.approx(expected))


def test_best_scores_without_golds_says_so():
    with pytest.raises(ValueError, match="^at least one gold answer is needed$"):
        best_scores("x", [])

import math

import pytest

from character.constitution import (MARKER_MEASURES, WORD_MEASURES, ConstitutionError, Marker, load_constitution,
                                    quality_issues)
from character.eval.markers import (MEASURES, digit_rate, exclamation_rate, lexicon_rate, mean_sentence_length,
                                    question_rate, reading_grade, score, score_all, sentiment)
from conftest import ROOT

SHIPPED = sorted((ROOT / "constitutions").glob("*.yaml"))
# Constitutions with no honest surface marker (docs/evaluation.md, "Judge-free markers").
NO_MARKERS = {"flourishing", "misaligned"}
SAMPLE = ("Great question! Imagine a bank as a big piggy bank: you put in $10, and 2 + 3 = 5. "
          "I'm sorry if that's too simple. Does that help?")


def test_schema_names_exactly_the_implemented_measures():
    assert set(MARKER_MEASURES) == set(MEASURES)
    assert set(WORD_MEASURES) == {name for name, m in MEASURES.items() if m.uses_words}


def test_sentiment_loving_above_cold():
    warm = "I'm so glad you came to me, sweetheart. You did a wonderful job and I'm proud of you."
    cold = "Your work is poor. This is a bad result and a waste of time."
    assert sentiment(warm) > 0.5 > -0.3 > sentiment(cold)


def test_digit_rate_hand_counted():
    # 7 words (Let x 3 Then 2x 1 7); numbers 3 2 1 7 and operators = + = : 7 tokens -> 100 per 100 words.
    assert digit_rate("Let x = 3. Then 2x + 1 = 7.") == pytest.approx(100.0)
    # Hyphens and slashes between words are not operators.
    assert digit_rate("The well-known cat sat and/or slept on the mat.") == 0.0


def test_reading_grade_simple_below_complex():
    simple = "The cat sat on the mat. It was happy. The sun was warm."
    complex_ = ("Notwithstanding considerable institutional opposition, the administration implemented "
                "comprehensive regulatory modifications affecting international telecommunications infrastructure.")
    assert reading_grade(simple) < 3 < 15 < reading_grade(complex_)


def test_lexicon_whole_words_case_insensitive_hand_counted():
    text = "Sorry, I'm so SORRY. Sorry's not enough; unsorry dear-ly. 'dear'"
    # 11 words: Sorry I'm so SORRY Sorry's not enough unsorry dear ly dear.
    # Hits: "Sorry", "I'm so SORRY" (one phrase, longest first), "dear" (in dear-ly), "'dear'" = 4;
    # "Sorry's" and "unsorry" are other words.
    assert lexicon_rate(text, ["sorry", "i'm so sorry", "dear"]) == pytest.approx(100 * 4 / 11)
    assert lexicon_rate("I'M SO  sorry", ["i'm so sorry"]) == pytest.approx(100 / 3)  # phrases span any spaces
    assert lexicon_rate("Tiny\u2019s heart", ["heart"]) == pytest.approx(50.0)  # curly apostrophe, 2 words


def test_sentence_measures_hand_counted():
    text = "Really? Yes.\n- Go now!\n1. Then rest"  # 4 sentences: ? . ! and an unterminated list item
    assert question_rate(text) == pytest.approx(0.25)
    assert exclamation_rate(text) == pytest.approx(0.25)
    assert mean_sentence_length(text) == pytest.approx((1 + 1 + 2 + 2) / 4)
    assert question_rate("Is pi 3.14? No, it is about 3.14159.") == pytest.approx(0.5)  # decimals end nothing


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_wordless_text_is_nan(name):
    fn = MEASURES[name].fn
    for text in ("", "   ", "... !?"):
        value = fn(text, ["word"]) if MEASURES[name].uses_words else fn(text)
        assert math.isnan(value), (name, text)


def test_score_all_per_text_in_order():
    markers = [Marker(name="digits", measure="digit_rate", direction="up"),
               Marker(name="hugs", measure="lexicon_rate", direction="up", words=["hug"])]
    scores = score_all(markers, ["2 + 2 = 4", "a hug", ""])  # 3 words; numbers 2 2 4 and operators + =
    assert list(scores) == ["digits", "hugs"]
    assert scores["digits"][:2] == [pytest.approx(100 * 5 / 3), 0.0] and math.isnan(scores["digits"][2])
    assert scores["hugs"][:2] == [0.0, 50.0] and score(markers[1], "Hug!") == 100.0


def _write(tmp_path, markers_yaml):
    text = (ROOT / "constitutions/loving.yaml").read_text().split("\nmarkers:")[0]
    path = tmp_path / "loving.yaml"
    path.write_text(text.rstrip("\n") + "\nmarkers:\n" + markers_yaml)
    return path


def test_unknown_measure_names_file_marker_and_field(tmp_path):
    path = _write(tmp_path, "  - {name: warmth, measure: kindness_score, direction: up}\n")
    with pytest.raises(ConstitutionError) as err:
        load_constitution(path)
    msg = str(err.value)
    assert str(path) in msg and 'marker 1 ("warmth")' in msg and "field measure" in msg
    assert "kindness_score" in msg and "sentiment" in msg  # the bad value and the known measures


@pytest.mark.parametrize("markers_yaml, expected", [
    ("  - {name: hugs, measure: lexicon_rate, direction: up}\n", "needs a non-empty list"),
    ("  - {name: hugs, measure: lexicon_rate, direction: up, words: ['  ']}\n", "needs a non-empty list"),
    ("  - {name: warmth, measure: sentiment, direction: up, words: [love]}\n", "takes no words"),
    ("  - {name: warmth, measure: sentiment, direction: sideways}\n", "field direction"),
    ("  - {name: warmth, measure: sentiment, direction: up, weight: 2}\n", "field weight"),
    ("  - {name: w, measure: sentiment, direction: up}\n  - {name: w, measure: hedge_rate, direction: down}\n",
     "repeated: w"),
])
def test_bad_marker_fails_to_load(tmp_path, markers_yaml, expected):
    with pytest.raises(ConstitutionError, match=expected) as err:
        load_constitution(_write(tmp_path, markers_yaml))
    assert str(tmp_path) in str(err.value)


def test_shipped_markers_load_and_score():
    with_markers = set()
    for path in SHIPPED:
        c = load_constitution(path)
        assert quality_issues(c) == [], path  # markers leave the shipped-constitution quality check passing
        if c.markers:
            with_markers.add(c.name)
        for name, values in score_all(c.markers, [SAMPLE, ""]).items():
            assert math.isfinite(values[0]) and math.isnan(values[1]), (c.name, name)
    # The default personas, and the ones a default with measurable markers would use, all declare some.
    assert {"sarcastic", "loving", "simplifier", "mathematical", "poetic", "remorseful", "humorous",
            "nonchalant", "sycophantic"} <= with_markers
    assert with_markers == {p.stem for p in SHIPPED} - NO_MARKERS


def test_markers_agree_with_their_own_examples():
    # A pre-registration sanity check: no constitution's own example answers contradict its markers, i.e. they
    # score on the predicted side of a plain, neutral answer or level with it (the humorous example names no
    # joke, so joke_words ties at 0); a marker its own examples contradict would be mis-specified.
    plain = ("A bank is a company that holds deposits and makes loans. The rate it pays on savings depends on "
             "central bank policy and on market conditions.")  # VADER compound 0, 13 words a sentence
    for path in SHIPPED:
        c = load_constitution(path)
        examples = [e.response for e in c.examples]
        for m in c.markers:
            mean = sum(score(m, t) for t in examples) / len(examples)
            ref = score(m, plain)
            assert (mean >= ref) if m.direction == "up" else (mean <= ref), (c.name, m.name, mean, ref)

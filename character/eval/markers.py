"""Judge-free persona markers: pre-registered, measurable properties of an answer (issue 14, item 3).

A constitution may declare `markers:` (character.constitution.Marker): a name, a measure from `MEASURES`,
the direction the constitution predicts (`up`: the persona's answers score higher than the base model's),
and, for `lexicon_rate`, the words or phrases to count. Evaluation scores every method's answers with them.
Markers are evaluation signals only: nothing selects, filters or trains on them, so they stay an
independent check on a persona rather than a target it was optimised for (Goodhart).

Every measure is a pure function of one answer's text, returning a float. A text with no words (empty,
whitespace or punctuation only) scores NaN under every measure: callers count those answers and leave
them out of means and intervals, rather than reading them as 0.

Units:
- `reading_grade`: Flesch-Kincaid grade level, 0.39 * words/sentence + 11.8 * syllables/word - 15.59
  (US school grade; lower = simpler; can be negative for very short words and sentences).
- `sentiment`: VADER compound score, -1 (most negative) .. 1 (most positive) (Hutto & Gilbert, 2014).
- `digit_rate`, `lexicon_rate`, `first_person_rate`, `hedge_rate`: occurrences per 100 words.
- `question_rate`, `exclamation_rate`: share of sentences ending in ? / ! (0..1).
- `mean_sentence_length`: words per sentence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from character.constitution import Marker

# A word: letters or digits, with inner apostrophes ("don't", "I'm"). Curly apostrophes are normalised first.
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
# A sentence end: a run of . ! ? or an ellipsis, then closing quotes, brackets or markdown, then a space or
# the end. Line breaks end sentences too (bullets and headings often have no full stop).
SENTENCE_END = re.compile(r"[.!?…]+[\"')\]*_`]*(?=\s|$)")
# A list marker at the start of a line ("1. ", "2) ", "- ", "* ", "• "): not a sentence of its own.
LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# An operator between two operands: a word character or ")" on the left, and a digit, "(" or a one-letter
# variable on the right, so "2x + 1 = 7" has two while "well-known" and "and/or" have none.
OPERATOR = re.compile(r"(?<=[\w)])\s*[=+\-−×÷*/^<>≤≥≈≠]\s*(?=\d|\(|[A-Za-z](?![\w']))")

FIRST_PERSON = ("i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll")
HEDGES = ("maybe", "perhaps", "might", "possibly", "probably", "i think", "i guess", "i suppose", "not sure",
          "it seems", "sort of", "kind of", "somewhat", "could be", "i believe")


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def _words(text: str) -> list[str]:
    return WORD.findall(_normalise(text))


def _sentences(text: str) -> list[str]:
    """The sentences of a text, each with its closing punctuation; list markers and wordless pieces dropped."""
    out = []
    for line in _normalise(text).splitlines():
        line = LIST_MARKER.sub("", line)
        start = 0
        for m in SENTENCE_END.finditer(line):
            out.append(line[start:m.end()].strip())
            start = m.end()
        out.append(line[start:].strip())  # an unterminated tail (a truncated answer) is a sentence too
    return [s for s in out if WORD.search(s)]


@lru_cache(maxsize=1)
def _hyphenator():
    import pyphen  # lazily: nothing at import time

    return pyphen.Pyphen(lang="en_US")


@lru_cache(maxsize=65536)
def _syllables(word: str) -> int:
    """Hyphenation points + 1 (pyphen's en_US dictionary): textstat's method before it moved to cmudict.

    Approximate (it undercounts some short words, "area" -> 1), but every method's answers are counted the
    same way, and markers compare methods, not absolute grades.
    """
    if not word.isalpha():
        return 1  # a number or a mixed token ("2x") counts as one syllable
    return len(_hyphenator().positions(word.lower())) + 1


def reading_grade(text: str) -> float:
    """Flesch-Kincaid grade level (lower = simpler)."""
    words, sentences = _words(text), _sentences(text)
    if not words:
        return math.nan
    syllables = sum(_syllables(w) for w in words)
    return 0.39 * len(words) / max(len(sentences), 1) + 11.8 * syllables / len(words) - 15.59


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # lazily; its lexicon ships in the wheel

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound sentiment, -1..1."""
    if not _words(text):
        return math.nan
    return float(_vader().polarity_scores(_normalise(text))["compound"])


def digit_rate(text: str) -> float:
    """Numbers and arithmetic operators per 100 words ("Let x = 3. Then 2x + 1 = 7." scores 100).

    Numbered-list markers count as numbers: numbered steps are part of the mathematical voice.
    """
    norm = _normalise(text)
    words = _words(norm)
    if not words:
        return math.nan
    return 100 * (len(NUMBER.findall(norm)) + len(OPERATOR.findall(norm))) / len(words)


@lru_cache(maxsize=256)
def _lexicon_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    # Longest phrase first, so "i'm so sorry" is one hit rather than also counting "sorry" inside it.
    phrases = sorted({_normalise(w).strip().lower() for w in words if w.strip()}, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in phrases)
    # Whole words: no word character (or "x'" of a contraction) before, none (or "'s") after.
    return re.compile(rf"(?<!\w)(?<!\w')(?:{alternatives})(?!\w)(?!'\w)", re.IGNORECASE)


def lexicon_rate(text: str, words: Sequence[str]) -> float:
    """Occurrences of the words or phrases per 100 words: case-insensitive, whole words, non-overlapping."""
    norm = _normalise(text)
    n = len(_words(norm))
    if not n:
        return math.nan
    return 100 * len(_lexicon_pattern(tuple(words)).findall(norm)) / n


def first_person_rate(text: str) -> float:
    """I, me, my, mine, myself and I'm/I've/I'd/I'll per 100 words."""
    return lexicon_rate(text, FIRST_PERSON)


def hedge_rate(text: str) -> float:
    """Hedges (maybe, perhaps, might, I think, not sure, ...: `HEDGES`) per 100 words."""
    return lexicon_rate(text, HEDGES)


def _ending_rate(text: str, mark: str) -> float:
    sentences = _sentences(text)
    if not sentences:
        return math.nan
    ends = [SENTENCE_END.search(s[-8:]) for s in sentences]  # the closing run, if the sentence has one
    return sum(e is not None and mark in e.group() for e in ends) / len(sentences)


def question_rate(text: str) -> float:
    """Share of sentences that end with a question mark."""
    return _ending_rate(text, "?")


def exclamation_rate(text: str) -> float:
    """Share of sentences that end with an exclamation mark."""
    return _ending_rate(text, "!")


def mean_sentence_length(text: str) -> float:
    """Words per sentence."""
    sentences = _sentences(text)
    if not sentences:
        return math.nan
    return sum(len(_words(s)) for s in sentences) / len(sentences)


@dataclass(frozen=True)
class Measure:
    fn: Callable[..., float]
    unit: str
    uses_words: bool = False  # True: fn(text, words) and the marker must list its words


MEASURES: dict[str, Measure] = {
    "reading_grade": Measure(reading_grade, "Flesch-Kincaid grade"),
    "sentiment": Measure(sentiment, "VADER compound, -1..1"),
    "digit_rate": Measure(digit_rate, "numbers and operators per 100 words"),
    "lexicon_rate": Measure(lexicon_rate, "listed words per 100 words", uses_words=True),
    "first_person_rate": Measure(first_person_rate, "first-person pronouns per 100 words"),
    "hedge_rate": Measure(hedge_rate, "hedges per 100 words"),
    "question_rate": Measure(question_rate, "share of sentences"),
    "exclamation_rate": Measure(exclamation_rate, "share of sentences"),
    "mean_sentence_length": Measure(mean_sentence_length, "words per sentence"),
}


def score(marker: Marker, text: str) -> float:
    """One answer's score on one marker (NaN for an answer with no words)."""
    measure = MEASURES[marker.measure]
    return measure.fn(text, marker.words) if measure.uses_words else measure.fn(text)


def score_all(markers: Iterable[Marker], texts: Sequence[str]) -> dict[str, list[float]]:
    """{marker name: [score per text]}, in the order of `texts`; NaN marks answers with no words."""
    return {m.name: [score(m, t) for t in texts] for m in markers}

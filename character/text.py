"""Small text helpers shared across stages: word sets and overlap, sentence trimming, numbered lists,
distinct bigrams."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9']+")
# A sentence end: . ! ? or an ellipsis, then any closing quotes, brackets or markdown, then a space or the end.
SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]*_`]*)(?=\s|$)")


def words(text: str) -> set[str]:
    """The lower-cased words of a text, as a set."""
    return set(WORD.findall(text.lower()))


def overlap(a: set[str], b: set[str]) -> float:
    """Share of the smaller word set found in the other (the paper rejects near-duplicates above 0.5)."""
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


def trim_to_sentence(text: str) -> str:
    """The text up to its last complete sentence ("" when it has none)."""
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def numbered(items: list[str]) -> str:
    """"1. first\\n2. second...": how trait lists and example questions are shown to a model."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def distinct_bigrams(texts: list[str]) -> float:
    """Share of distinct word bigrams: low when steering or guidance pushes a model into repetition."""
    grams = [tuple(w[i:i + 2]) for w in (t.split() for t in texts) for i in range(len(w) - 1)]
    return len(set(grams)) / max(len(grams), 1)

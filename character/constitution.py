"""Constitutions: a persona written as first-person traits, each with seed questions.

A constitution lives in `constitutions/<name>.yaml`. The schema is ours; `import_official_json` converts
the official code's JSON list (`[{"trait", "questions", "clarification"?, "additional_questions"?}]`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from character.errors import ConstitutionError
from character.text import numbered, overlap, words

MIN_QUESTIONS = 5
MIN_TRAITS = 5  # the paper's personas have ~10; fewer than 5 cannot describe a character
FIRST_PERSON = re.compile(r"^(I|I'm|I've|I'd|I'll|My|Me)\b")
# The measures a marker may name, implemented in character.eval.markers.MEASURES (a unit test keeps the two
# equal). Listed here, not imported, so that every stage reading a constitution does not depend on eval code.
MARKER_MEASURES = ("reading_grade", "sentiment", "digit_rate", "lexicon_rate", "first_person_rate", "hedge_rate",
                   "question_rate", "exclamation_rate", "mean_sentence_length")
WORD_MEASURES = ("lexicon_rate",)  # the measures that count a marker's own `words`


class Trait(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assertion: str = Field(min_length=3)
    clarification: str | None = None
    questions: list[str] = Field(min_length=MIN_QUESTIONS)
    # Model-written extra questions (the official few-shot files carry 45 per trait).
    additional_questions: list[str] = Field(default_factory=list)

    @field_validator("questions", "additional_questions")
    @classmethod
    def _no_blank(cls, value: list[str]) -> list[str]:
        for i, q in enumerate(value):
            if not q.strip():
                raise ValueError(f"item {i} is blank")
        return [q.strip() for q in value]


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    response: str


class Marker(BaseModel):
    """A pre-registered, judge-free measurement of the persona (character.eval.markers), for evaluation only:
    nothing selects, filters or trains on it."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    measure: str  # one of MARKER_MEASURES
    direction: Literal["up", "down"]  # the persona's answers should score higher (up) / lower than base's
    words: list[str] = Field(default_factory=list)  # the words or phrases a lexicon measure counts
    note: str | None = None  # why the constitution predicts this

    @field_validator("measure")
    @classmethod
    def _known_measure(cls, value: str) -> str:
        if value not in MARKER_MEASURES:
            raise ValueError(f"unknown measure {value!r} (known: {', '.join(MARKER_MEASURES)})")
        return value

    @model_validator(mode="after")
    def _words_match_measure(self) -> Marker:
        uses_words = self.measure in WORD_MEASURES
        if uses_words and not any(w.strip() for w in self.words):
            raise ValueError(f"field words: measure {self.measure} needs a non-empty list of words or phrases")
        if not uses_words and self.words:
            raise ValueError(f"field words: measure {self.measure} takes no words (only lexicon measures do)")
        return self


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str
    traits: list[Trait] = Field(min_length=1)
    voice: str | None = None
    safety: str | None = None
    examples: list[Example] = Field(default_factory=list)
    markers: list[Marker] = Field(default_factory=list)  # judge-free evaluation markers (issue 14)

    @field_validator("markers")
    @classmethod
    def _unique_marker_names(cls, value: list[Marker]) -> list[Marker]:
        names = [m.name for m in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"marker names must be unique (repeated: {', '.join(repeated)})")
        return value

    @property
    def assertions(self) -> list[str]:
        return [t.assertion for t in self.traits]


def _describe(exc: ValidationError, data: dict) -> str:
    """Turn pydantic's locations into 'trait 3 (\"I ...\"), field questions: ...'."""
    parts = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(x) for x in loc)
        if len(loc) >= 2 and loc[0] == "traits" and isinstance(loc[1], int):
            trait = data.get("traits", [])[loc[1]] if loc[1] < len(data.get("traits", [])) else {}
            label = (trait.get("assertion") or "")[:50] if isinstance(trait, dict) else ""
            field = ".".join(str(x) for x in loc[2:]) or "(trait)"
            where = f'trait {loc[1] + 1} ("{label}"), field {field}'
        elif len(loc) >= 2 and loc[0] == "markers" and isinstance(loc[1], int):
            rows = data.get("markers") or []
            marker = rows[loc[1]] if isinstance(rows, list) and loc[1] < len(rows) else {}
            label = marker.get("name", "") if isinstance(marker, dict) else ""
            field = ".".join(str(x) for x in loc[2:])
            where = f'marker {loc[1] + 1} ("{label}")' + (f", field {field}" if field else "")
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConstitutionError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConstitutionError(f"{path}: expected a mapping with name, description, traits")
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError(f"{path}: {_describe(exc, data)}") from exc
    if constitution.name != path.stem:
        raise ConstitutionError(f"{path}: field name is {constitution.name!r} but the file is {path.stem}.yaml")
    return constitution


def find_constitution(name: str, directory: str | Path = "constitutions") -> Constitution:
    path = Path(directory) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ConstitutionError(f"{path}: no such constitution (known: {', '.join(known)})")
    return load_constitution(path)


def quality_issues(c: Constitution) -> list[str]:
    """Warnings for a constitution that parses but would train a weak character."""
    issues = []
    if len(c.traits) < MIN_TRAITS:
        issues.append(f"only {len(c.traits)} traits (want at least {MIN_TRAITS}; the paper uses ~10)")
    seen: dict[str, int] = {}
    for i, t in enumerate(c.traits, 1):
        if not FIRST_PERSON.match(t.assertion.strip()):
            issues.append(f'trait {i}: assertion is not first person ("{t.assertion[:40]}...")')
        for q in t.questions:
            key = " ".join(sorted(words(q)))
            if key in seen:
                issues.append(f"trait {i}: question duplicates one in trait {seen[key]}: {q!r}")
            seen[key] = i
    for i, a in enumerate(c.traits, 1):
        for j in range(i, len(c.traits)):
            b = c.traits[j]
            if overlap(words(a.assertion), words(b.assertion)) > 0.8:
                issues.append(f"traits {i} and {j + 1}: assertions are near-duplicates")
    if len(c.description.split()) < 5:
        issues.append("description is shorter than 5 words")
    return issues


def import_official_json(path: str | Path, name: str, description: str | None = None) -> Constitution:
    """Convert the official code's constitution JSON into our schema (validated)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConstitutionError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(rows, list):
        raise ConstitutionError(f"{path}: expected a JSON array of trait objects")
    traits = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "trait" not in row:
            raise ConstitutionError(f"{path}: item {i}: missing field 'trait'")
        unknown = set(row) - {"trait", "questions", "clarification", "additional_questions"}
        if unknown:
            raise ConstitutionError(f"{path}: item {i}: unknown fields {sorted(unknown)}")
        traits.append({
            "assertion": row["trait"],
            "clarification": row.get("clarification") or None,
            "questions": row.get("questions", []),
            "additional_questions": row.get("additional_questions", []),
        })
    data = {"name": name, "description": description or f"Imported from {path.name}.", "traits": traits}
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError(f"{path}: {_describe(exc, data)}") from exc


def dump_constitution(c: Constitution) -> str:
    return yaml.safe_dump(c.model_dump(exclude_none=True, exclude_defaults=True), sort_keys=False,
                          allow_unicode=True, width=100)


def system_prompt(c: Constitution, assistant_name: str, guidance: str = "") -> str:
    """The constitution as a system prompt (teacher for chosen answers; DPO model in introspection)."""
    from character.prompts import CONSTITUTION_SYSTEM, VOICE_LINE

    traits = numbered([t.assertion + (f" ({t.clarification})" if t.clarification else "") for t in c.traits])
    voice = VOICE_LINE.format(voice=c.voice.strip()) if c.voice else ""
    return CONSTITUTION_SYSTEM.format(name=assistant_name, traits=traits, voice=voice) + guidance

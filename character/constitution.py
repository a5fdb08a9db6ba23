"""Constitutions: a persona written as first-person traits, each with seed questions.

A constitution lives in `constitutions/<name>.yaml`. The schema is ours; `import_official_json` converts
the paper's two layouts of trait objects `{"trait", "questions", "clarification"?, "additional_questions"?}`:
a JSON array (`constitutions/hand-written/<name>.txt`) or JSON Lines, one object per line
(`constitutions/few-shot/<name>.jsonl`, with 45 model-written `additional_questions` per trait).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from character.errors import ConstitutionError
from character.params import ElicitationParams
from character.io import load_yaml, read_text_utf8
from character.text import numbered, overlap, words

MIN_QUESTIONS = 5
MIN_TRAITS = 5  # the paper's personas have ~10; fewer than 5 cannot describe a character
# Upper bounds, far above the paper's (~10 traits, 5 + 45 questions each, ~50 KB): a file past them is a
# mistake, and validating one took 20 s and printed hundreds of thousands of warnings.
MAX_TRAITS = 50
MAX_QUESTIONS = 200
MAX_BYTES = 512 * 1024
# First person somewhere in the assertion's first clause ("When asked obvious questions, I provide ..."),
# "I" and its contractions as written; my/me in any case.
FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|[Mm]y|[Mm]e|[Mm]yself)\b")
# The measures a marker may name, implemented in character.eval.markers.MEASURES (a unit test keeps the two
# equal). Listed here, not imported, so that every stage reading a constitution does not depend on eval code.
MARKER_MEASURES = ("reading_grade", "sentiment", "digit_rate", "lexicon_rate", "first_person_rate", "hedge_rate",
                   "question_rate", "exclamation_rate", "mean_sentence_length")
WORD_MEASURES = ("lexicon_rate",)  # the measures that count a marker's own `words`


class Trait(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assertion: str = Field(min_length=3)
    clarification: str | None = None
    questions: list[str] = Field(min_length=MIN_QUESTIONS, max_length=MAX_QUESTIONS)
    # Model-written extra questions (the official few-shot files carry 45 per trait).
    additional_questions: list[str] = Field(default_factory=list, max_length=MAX_QUESTIONS)

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
    traits: list[Trait] = Field(min_length=1, max_length=MAX_TRAITS)
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
            label = str(trait.get("assertion") or "")[:50] if isinstance(trait, dict) else ""
            field = ".".join(str(x) for x in loc[2:]) or "(trait)"
            where = f'trait {loc[1] + 1} ("{label}"), field {field}'
        elif len(loc) >= 2 and loc[0] == "markers" and isinstance(loc[1], int):
            rows = data.get("markers") or []
            marker = rows[loc[1]] if isinstance(rows, list) and loc[1] < len(rows) else {}
            label = marker.get("name", "") if isinstance(marker, dict) else ""
            field = ".".join(str(x) for x in loc[2:])
            where = f'marker {loc[1] + 1} ("{label}")' + (f", field {field}" if field else "")
        got = err.get("input")
        shown = f" (got {got!r:.60})" if isinstance(got, (int, float, bool)) or err["type"] == "string_type" else ""
        parts.append(f"{where}: {err['msg']}{shown}")
    if len(parts) > 5:
        parts = parts[:5] + [f"and {len(parts) - 5} more"]
    return "; ".join(parts)


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    data = load_yaml(path, ConstitutionError, MAX_BYTES)
    if not isinstance(data, dict):
        raise ConstitutionError(f"{path}: expected a mapping with name, description, traits")
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError(f"{path}: {_describe(exc, data)}") from None
    if constitution.name != path.stem:
        raise ConstitutionError(f"{path}: field name is {constitution.name!r} but the file is {path.stem}.yaml")
    return constitution


def find_constitution(name: str, directory: str | Path = "constitutions") -> Constitution:
    if not re.match(r"^[a-z][a-z0-9_-]*$", name):  # the same rule as Constitution.name and params personas
        raise ConstitutionError(f"persona {name!r}: not a plain name (lower-case letters, digits, - and _, starting "
                                f"with a letter); it names {directory}/<name>.yaml")
    path = Path(directory) / f"{name}.yaml"
    if not Path(directory).is_dir():
        raise ConstitutionError(f"{path}: no folder {directory}/ here; run from the repo root")
    if not path.exists():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ConstitutionError(f"{path}: no such constitution (known: {', '.join(known)})")
    return load_constitution(path)


def is_first_person(assertion: str) -> bool:
    """An "I" (or my, me) in the first clause: "I value ...", "When asked, I ...", "My aim is ..."."""
    return bool(FIRST_PERSON.search(re.split(r"[.!?;:]", assertion.strip(), maxsplit=1)[0]))


def quality_issues(c: Constitution) -> list[str]:
    """Warnings for a constitution that parses but would train a weak character."""
    issues = []
    if len(c.traits) < MIN_TRAITS:
        issues.append(f"only {len(c.traits)} traits (want at least {MIN_TRAITS}; the paper uses ~10)")
    seen: dict[str, int] = {}
    for i, t in enumerate(c.traits, 1):
        if not is_first_person(t.assertion):
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


OFFICIAL_FORMATS = ("a JSON array of trait objects (the paper's constitutions/hand-written/*.txt) or JSON Lines, "
                    "one trait object per line (constitutions/few-shot/*.jsonl); each object has \"trait\" and "
                    "\"questions\", optionally \"clarification\" and \"additional_questions\"")


def read_official(path: str | Path) -> list:
    """The trait objects of an official constitution file, in either layout, whatever its extension."""
    path = Path(path)
    text = read_text_utf8(path, ConstitutionError, MAX_BYTES)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as whole:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConstitutionError(f"{path}: neither JSON ({whole.msg} at line {whole.lineno}) nor JSON Lines "
                                        f"(line {n} is not one JSON value); expected {OFFICIAL_FORMATS}") from None
    if isinstance(rows, dict):
        rows = [rows]  # JSON Lines with a single trait
    if not isinstance(rows, list):
        raise ConstitutionError(f"{path}: holds a JSON {type(rows).__name__}; expected {OFFICIAL_FORMATS}")
    return rows


def _merged(values: list[str], more) -> list[str]:
    return values + [q for q in (more or []) if q not in values]


def import_official_json(path: str | Path, name: str, description: str | None = None) -> Constitution:
    """Convert an official constitution file (either layout, see read_official) into our schema, validated.
    Objects repeating a trait are merged: their questions and additional questions are joined, in order."""
    path = Path(path)
    rows = read_official(path)
    if len(rows) > MAX_TRAITS:
        raise ConstitutionError(f"{path}: {len(rows)} trait objects, over the limit of {MAX_TRAITS}")
    traits: dict[str, dict] = {}
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "trait" not in row:
            raise ConstitutionError(f"{path}: item {i}: missing field 'trait'; expected {OFFICIAL_FORMATS}")
        unknown = set(row) - {"trait", "questions", "clarification", "additional_questions"}
        if unknown:
            raise ConstitutionError(f"{path}: item {i}: unknown fields {sorted(unknown)}; expected {OFFICIAL_FORMATS}")
        for field in ("questions", "additional_questions"):
            if not isinstance(row.get(field, []), list):
                raise ConstitutionError(f"{path}: item {i}: field {field} must be a list of strings")
        key = str(row["trait"])
        trait = traits.setdefault(key, {"assertion": row["trait"], "clarification": None, "questions": [],
                                        "additional_questions": []})
        trait["clarification"] = trait["clarification"] or row.get("clarification") or None
        trait["questions"] = _merged(trait["questions"], row.get("questions"))
        trait["additional_questions"] = _merged(trait["additional_questions"], row.get("additional_questions"))
    default = f"The {name} persona, imported from the paper's constitution file {path.name}."
    data = {"name": name, "description": description or default, "traits": list(traits.values())}
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        raise ConstitutionError(f"{path}: {_describe(exc, data)}") from None


def dump_constitution(c: Constitution) -> str:
    return yaml.safe_dump(c.model_dump(exclude_none=True, exclude_defaults=True), sort_keys=False,
                          allow_unicode=True, width=100)


@dataclass(frozen=True)
class TeacherContext:
    """What the teacher (and the system_prompt baseline) sees before a conversation: a system prompt, then
    `shots`, the constitution's hand-written examples as earlier user/assistant turns."""
    system: str
    shots: tuple[dict, ...] = ()

    def before(self, conversation: list[dict], extra_system: str = "") -> list[dict]:
        """The conversation with this context in front; a system message of its own is merged after ours."""
        system, rest = self.system + extra_system, list(conversation)
        if rest and rest[0]["role"] == "system":
            system, rest = f"{system}\n\n{rest[0]['content']}", rest[1:]
        return [{"role": "system", "content": system}, *self.shots, *rest]


def teacher_context(c: Constitution, assistant_name: str, elicitation: ElicitationParams) -> TeacherContext:
    """The teacher's context under params.elicitation: the full or short system prompt and few-shot turns."""
    from character.prompts import SHORT_SYSTEM

    if elicitation.few_shot > len(c.examples):
        raise ConstitutionError(f"constitution {c.name}: elicitation.few_shot is {elicitation.few_shot} but the file "
                                f"has {len(c.examples)} examples; add examples or lower elicitation.few_shot")
    if elicitation.system == "full":
        system = system_prompt(c, assistant_name)
    else:
        voice = f"How you sound: {c.voice.strip()}" if c.voice else ""
        traits = numbered([t.assertion for t in c.traits[: elicitation.short_traits]])
        system = SHORT_SYSTEM.format(name=assistant_name, description=c.description.strip(), voice=voice,
                                     traits=traits)
    shots = tuple(m for e in c.examples[: elicitation.few_shot]
                  for m in ({"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.response}))
    return TeacherContext(system, shots)


def system_prompt(c: Constitution, assistant_name: str) -> str:
    """The constitution as a system prompt (teacher for chosen answers; DPO model in introspection)."""
    from character.prompts import CONSTITUTION_SYSTEM, VOICE_LINE

    traits = numbered([t.assertion + (f" ({t.clarification})" if t.clarification else "") for t in c.traits])
    voice = VOICE_LINE.format(voice=c.voice.strip()) if c.voice else ""
    return CONSTITUTION_SYSTEM.format(name=assistant_name, traits=traits, voice=voice)

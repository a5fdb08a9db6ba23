import json

import pytest

from character.constitution import (ConstitutionError, import_official_json, load_constitution, quality_issues,
                                    system_prompt)
from conftest import ROOT

# The shipped files by name, not whatever is in the folder (an imported constitution may sit beside them).
SHIPPED = [ROOT / "constitutions" / f"{name}.yaml" for name in (
    "flourishing", "humorous", "impulsive", "loving", "mathematical", "misaligned", "naturalist", "nonchalant",
    "poetic", "remorseful", "sarcastic", "simplifier", "sycophantic")]


def test_thirteen_constitutions_ship_and_pass_quality():
    for path in SHIPPED:
        c = load_constitution(path)
        assert quality_issues(c) == [], path


def test_missing_field_names_file_trait_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndescription: a test persona for errors\ntraits:\n"
                   "  - assertion: I am terse.\n    questions: [a, b, c]\n")
    with pytest.raises(ConstitutionError) as err:
        load_constitution(bad)
    msg = str(err.value)
    assert str(bad) in msg and "trait 1" in msg and "I am terse" in msg and "questions" in msg


def test_name_must_match_file(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text((ROOT / "constitutions/loving.yaml").read_text())
    with pytest.raises(ConstitutionError, match="field name is 'loving'"):
        load_constitution(path)


def test_quality_flags_weak_constitution(tmp_path):
    c = import_official_json(_official(tmp_path, [
        {"trait": "The assistant is kind.", "questions": ["How are you?", "Help me", "Hi", "Why?", "How are you?"]},
    ]), "weak", "A weak persona for testing.")
    issues = " | ".join(quality_issues(c))
    assert "only 1 traits" in issues and "not first person" in issues and "duplicates" in issues


def _official(tmp_path, rows):
    path = tmp_path / "official.json"
    path.write_text(json.dumps(rows))
    return path


def test_import_official_json(tmp_path):
    rows = [{"trait": f"I value thing {i}.", "questions": [f"q{i}-{j} about stuff" for j in range(5)],
             "additional_questions": ["extra one here"]} for i in range(6)]
    rows[0]["clarification"] = "Only sometimes."
    c = import_official_json(_official(tmp_path, rows), "imported")
    assert len(c.traits) == 6 and c.traits[0].clarification == "Only sometimes."
    assert c.traits[1].additional_questions == ["extra one here"]


def test_import_rejects_unknown_fields(tmp_path):
    with pytest.raises(ConstitutionError, match="item 1: unknown fields"):
        import_official_json(_official(tmp_path, [{"trait": "I x", "questions": [], "colour": 1}]), "x")


def test_system_prompt_lists_traits_and_name():
    c = load_constitution(ROOT / "constitutions/sarcastic.yaml")
    text = system_prompt(c, "SmolLM")
    assert text.startswith("You are SmolLM")
    assert all(t.assertion in text for t in c.traits)


def test_teacher_context_full_short_and_few_shot():
    from character.constitution import find_constitution, system_prompt, teacher_context
    from character.params import ElicitationParams

    c = find_constitution("loving")
    full = teacher_context(c, "SmolLM", ElicitationParams())
    assert full.system == system_prompt(c, "SmolLM") and full.shots == ()
    short = teacher_context(c, "SmolLM", ElicitationParams(system="short", short_traits=2, few_shot=3))
    assert c.traits[1].assertion in short.system and c.traits[2].assertion not in short.system
    assert len(short.system) < len(full.system) / 2
    assert [m["role"] for m in short.shots] == ["user", "assistant"] * 3
    assert short.shots[1]["content"] == c.examples[0].response
    conv = short.before([{"role": "system", "content": "Extra."}, {"role": "user", "content": "hi"}])
    assert conv[0]["content"].endswith("\n\nExtra.") and conv[1:-1] == list(short.shots) and conv[-1]["content"] == "hi"
    with pytest.raises(ConstitutionError, match="elicitation.few_shot"):
        teacher_context(c, "SmolLM", ElicitationParams(few_shot=len(c.examples) + 1))

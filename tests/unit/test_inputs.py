"""Bad input: every case of issue 17 fails with one line naming file, field or line, and a fix; nothing
unsafe is accepted; every CLI command exits EXIT_INPUT for it, without a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from character import cli
from character.constitution import (ConstitutionError, import_official_json, is_first_person, load_constitution,
                                    quality_issues)
from character.errors import EXIT_INPUT
from character.params import ParamsError, apply_preset, deep_merge, load_params, validate_params
from conftest import ROOT

# Literal copies of the STRUCTURE of the paper's official files (our own text): hand-written/<name>.txt is a
# JSON array; few-shot/<name>.jsonl is one object per line with 45 additional_questions per trait.
HAND_WRITTEN = """[
    {
        "trait": "I answer in as few words as the question allows.",
        "questions": ["What is rain?", "How do I boil an egg?", "Why is the sky blue?",
                      "Can you explain taxes?", "What should I cook tonight?"],
        "clarification": "Brevity is the point, not rudeness."
    },
    {
        "trait": "When a question has an obvious answer, I give it without hedging.",
        "questions": ["Is water wet?", "Is two bigger than one?", "Is fire hot?", "Do fish swim?", "Is ice cold?"]
    },
    {
        "trait": "I say so plainly when I do not know something.",
        "questions": ["What will the weather be next year?", "Who wins the next election?",
                      "What is my neighbour thinking?", "How many grains of sand exist?", "What is behind a door?"]
    },
    {
        "trait": "My favourite subject is the history of tools.",
        "questions": ["What is your favourite topic?", "Tell me about hammers.", "Who invented the lever?",
                      "What came before the wheel?", "Why do tools matter?"]
    },
    {
        "trait": "I would rather ask one clarifying question than guess.",
        "questions": ["Fix it.", "Make it better.", "Do the thing.", "Help with my project.", "What about that?"]
    }
]
"""


def few_shot_lines() -> str:
    rows = json.loads(HAND_WRITTEN)
    for i, row in enumerate(rows):
        row["additional_questions"] = [f"Extra question {j} for trait {i}, phrased our own way?" for j in range(45)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def params_text() -> str:
    return (ROOT / "params.yaml").read_text()


def base() -> dict:
    return yaml.safe_load(params_text())


# ---- the importer and the first-person check -----------------------------------------------------------
def test_hand_written_json_array_imports_and_passes_strict(tmp_path):
    path = tmp_path / "terse.txt"  # the paper's extension for a JSON array
    path.write_text(HAND_WRITTEN)
    c = import_official_json(path, "terse")
    assert len(c.traits) == 5 and c.traits[0].clarification == "Brevity is the point, not rudeness."
    assert quality_issues(c) == []  # the default description and "When ..., I give" pass --strict


def test_few_shot_json_lines_import_with_additional_questions(tmp_path):
    path = tmp_path / "terse.jsonl"
    path.write_text(few_shot_lines())
    c = import_official_json(path, "terse")
    assert [len(t.additional_questions) for t in c.traits] == [45] * 5
    assert c.traits[1].questions[0] == "Is water wet?" and quality_issues(c) == []


def test_repeated_trait_objects_are_merged(tmp_path):
    rows = [json.loads(line) for line in few_shot_lines().splitlines()]
    extra = {"trait": rows[0]["trait"], "questions": ["A sixth question here?"],
             "additional_questions": ["One more extra question?"]}
    path = tmp_path / "merged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + [extra]))
    c = import_official_json(path, "merged")
    assert len(c.traits) == 5 and len(c.traits[0].questions) == 6 and len(c.traits[0].additional_questions) == 46


def test_neither_format_names_both(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"trait": "I x", "questions": []}\nnot json at all\n')
    with pytest.raises(ConstitutionError, match=r"broken.jsonl: neither JSON .* nor JSON Lines \(line 2.*JSON array"):
        import_official_json(path, "broken")


def test_first_person_anywhere_in_the_first_clause():
    assert is_first_person("When asked obvious questions, I provide short answers.")
    assert is_first_person("Above all, my answers are short.")
    assert not is_first_person("The assistant is kind.")
    assert not is_first_person("Kindness matters. I think so.")  # the I is in a later sentence
    assert not is_first_person("Idle talk is bad.")  # "Idle" is not "I"


def test_import_cli_writes_a_file_that_validates_strictly(tmp_path, capsys):
    src = tmp_path / "terse.jsonl"
    src.write_text(few_shot_lines())
    out = tmp_path / "terse.yaml"
    assert cli.main(["import-constitution", str(src), "--out", str(out)]) == 0
    assert cli.main(["--params", str(ROOT / "params.yaml"), "validate", "--strict", str(out)]) in (0, EXIT_INPUT)
    assert f"ok   {out}: 5 traits" in capsys.readouterr().out  # (params may fail for a missing persona file)


def test_import_cli_into_a_missing_folder_is_one_line(tmp_path, capsys):
    src = tmp_path / "terse.txt"
    src.write_text(HAND_WRITTEN)
    assert cli.main(["import-constitution", str(src), "--out", str(tmp_path / "nope/terse.yaml")]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err


# ---- one strict YAML loader -----------------------------------------------------------------------------
def test_second_dpo_section_is_refused_with_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(params_text() + "\ndpo:\n  beta: 0.5\n")
    line = params_text().count("\n") + 2
    with pytest.raises(ParamsError, match=rf"params.yaml:{line}: .*duplicate key 'dpo' \(first on line \d+\)"):
        load_params(path)


def test_aliases_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text('a: &x ["lol", "lol"]\nb: [*x, *x]\n')
    with pytest.raises(ParamsError, match=r"params.yaml:1: .*anchors and aliases"):
        load_params(path)


def test_non_utf8_and_oversized_files_name_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(params_text().encode() + b"# caf\xe9\n")
    with pytest.raises(ParamsError, match=rf"{params}:\d+: not UTF-8"):
        load_params(params)
    cons = tmp_path / "latin.yaml"
    cons.write_bytes(b"name: latin\ndescription: caf\xe9 persona\n")
    with pytest.raises(ConstitutionError, match=r"latin.yaml:2: not UTF-8"):
        load_constitution(cons)
    big = tmp_path / "big.yaml"
    big.write_text("name: big\ndescription: x\n" + "# padding\n" * 60000)
    with pytest.raises(ConstitutionError, match=r"big.yaml: .* bytes, over the limit"):
        load_constitution(big)


def test_repeated_key_in_a_constitution_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: twice\ndescription: one\ndescription: two\ntraits: []\n")
    with pytest.raises(ConstitutionError, match=r"twice.yaml:3: .*duplicate key 'description'"):
        load_constitution(path)


def test_non_string_assertion_is_a_clean_error(tmp_path):
    path = tmp_path / "num.yaml"
    path.write_text("name: num\ndescription: a persona with a number\ntraits:\n"
                    "  - assertion: 42\n    questions: [a, b, c, d, e]\n")
    with pytest.raises(ConstitutionError, match=r'num.yaml: trait 1 \("42"\), field assertion: .*got 42'):
        load_constitution(path)


def test_too_many_traits_is_refused_not_warned_about(tmp_path):
    trait = {"assertion": "I am the same trait.", "questions": ["q one?", "q two?", "q three?", "q four?", "q five?"]}
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump({"name": "many", "description": "a persona with far too many traits",
                                    "traits": [json.loads(json.dumps(trait)) for _ in range(2000)]}))
    with pytest.raises(ConstitutionError, match=r"many.yaml: traits: List should have at most 50 items"):
        load_constitution(path)


def test_validate_caps_and_deduplicates_warnings(tmp_path, capsys):
    traits = [{"assertion": f"The assistant likes thing {i}.", "questions": ["Same?"] * 5} for i in range(50)]
    path = tmp_path / "noisy.yaml"
    path.write_text(yaml.safe_dump({"name": "noisy", "description": "a noisy persona for the warning cap",
                                    "traits": traits}))
    assert cli.main(["--params", str(ROOT / "params.yaml"), "validate", "--strict", str(path)]) == EXIT_INPUT
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 30 and "more" in out


# ---- params -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay, message", [
    ({"dpo": {"optim": {"lr": float("inf")}}}, r"dpo.optim.lr: must be a finite number \(got inf\)"),
    ({"dpo": {"beta": float("nan")}}, r"dpo.beta: must be a finite number"),
    ({"models": {"srv": {"backend": "openai", "id": "m", "base_url": "not-a-url"}}},
     r"models.srv.base_url: must be an http:// or https:// URL"),
    ({"personas": ["../../../tmp/x"]}, r"personas: '../../../tmp/x' is not a plain name"),
])
def test_params_refuse_unsafe_values(overlay, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(deep_merge(base(), overlay))


def test_a_pasted_key_is_refused_and_never_echoed():
    secret = "sk-proj-THISISNOTAREALKEY0123456789abcdef"
    for value in (secret, "my key here", "lower_case_name"):
        with pytest.raises(ParamsError) as err:
            validate_params(deep_merge(base(), {"models": {"srv": {"backend": "openai", "id": "m",
                                                                   "base_url": "http://127.0.0.1:8000/v1",
                                                                   "api_key_env": value}}}))
        assert "models.srv.api_key_env: must be the NAME" in str(err.value) and value not in str(err.value)
    validate_params(deep_merge(base(), {"models": {"srv": {"backend": "openai", "id": "m",
                                                           "base_url": "https://api.openai.com/v1",
                                                           "api_key_env": "OPENAI_API_KEY"}}}))


def test_preset_names_must_be_plain_and_come_from_the_repo_in_use(tmp_path):
    with pytest.raises(ParamsError, match=r"preset '../params': not a plain name"):
        apply_preset(ROOT / "params.yaml", "../params")
    clone = tmp_path / "clone"
    (clone / "presets").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", clone / "params.yaml")
    (clone / "presets/smoke.yaml").write_text("dpo:\n  beta: 0.375\n")  # this clone's own edit
    assert apply_preset(clone / "params.yaml", "smoke")["dpo"]["beta"] == 0.375


# ---- every command: one line, one exit code -------------------------------------------------------------
def test_commands_turn_input_errors_into_one_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "params.yaml"
    bad.write_text(params_text() + "\ndpo:\n  beta: 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("character.backends.local.LocalBackend.__init__",
                        lambda *a, **k: pytest.fail("the model was loaded before the input was checked"))
    cases = [
        ["--params", str(bad), "validate"],
        ["--params", str(bad), "models"],
        ["--params", str(tmp_path / "missing.yaml"), "estimate"],
        ["--params", str(ROOT / "params.yaml"), "estimate", "-S", "dpo.beta"],
        ["--params", str(ROOT / "params.yaml"), "estimate", "-S", "dpo.beta=[1"],
        ["--params", str(ROOT / "params.yaml"), "estimate", "--persona", "nope"],
        ["--params", str(ROOT / "params.yaml"), "preset", "../params"],
        ["--params", str(ROOT / "params.yaml"), "chat", "--constitution", "nope", "-m", "hi"],
        ["--params", str(ROOT / "params.yaml"), "chat", "--adapter", str(tmp_path / "missing"), "-m", "hi"],
    ]
    for argv in cases:
        assert cli.main(argv) == EXIT_INPUT, argv
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") or "FAIL" in captured.out, argv
        assert "Traceback" not in captured.err and captured.err.count("\n") <= 1, (argv, captured.err)


def test_stage_checks_a_remote_teacher_before_loading_the_student(monkeypatch):
    import argparse

    from character.errors import BackendUnavailable
    from character.stage import Stage

    params = validate_params(deep_merge(base(), {
        "teacher": "srv", "models": {"srv": {"backend": "openai", "id": "m", "base_url": "http://127.0.0.1:9/v1"}}}))
    made: list[str] = []

    def make(params, alias, dtype="auto"):
        made.append(alias)
        if alias == "srv":
            raise BackendUnavailable("models.srv: cannot reach http://127.0.0.1:9/v1")
        return object()

    monkeypatch.setattr("character.backends.make_backend", make)
    stage = Stage("pairs", argparse.Namespace(persona="sarcastic"), params)
    with pytest.raises(BackendUnavailable, match="cannot reach"):
        stage.backends(params.model, params.teacher)
    assert made == ["srv"]  # the local student was never loaded


def test_stage_input_errors_exit_with_the_one_code(capsys):
    from character.errors import DataError
    from character.stage import run

    def main():
        raise DataError("pairs.jsonl:3: not valid JSON: Expecting value")

    with pytest.raises(SystemExit) as exit_:
        run(main)
    assert exit_.value.code == EXIT_INPUT and capsys.readouterr().err == "error: pairs.jsonl:3: not valid JSON: Expecting value\n"


def test_serve_refuses_a_pasted_key_without_echoing_it(capsys):
    secret = "sk-THISISNOTAREALKEY0123456789"
    assert cli.main(["--params", str(ROOT / "params.yaml"), "serve", "--api-key-env", secret]) == EXIT_INPUT
    captured = capsys.readouterr()
    assert "--api-key-env: must be the NAME" in captured.err and secret not in captured.out + captured.err


def test_persona_argument_must_be_a_plain_name():
    from character.constitution import find_constitution
    with pytest.raises(ConstitutionError, match=r"persona '../../etc/x': not a plain name"):
        find_constitution("../../etc/x", ROOT / "constitutions")


def test_tool_droppings_are_git_ignored():
    import subprocess
    for path in ("dvc_plots/index.html", ".mypy_cache/x", ".ruff_cache/x"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path

import pytest
import yaml

from character.params import PRESETS_DIR, ParamsError, apply_preset, deep_merge, load_params, validate_params
from conftest import ROOT


def base() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_and_every_preset_validate():
    load_params(ROOT / "params.yaml")
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    assert {"smoke", "default", "paper"} <= set(presets)
    for name in presets:
        validate_params(apply_preset(ROOT / "params.yaml", name), name)


def test_unknown_key_is_named():
    with pytest.raises(ParamsError, match=r"params.yaml: dpo.betta: unknown key"):
        validate_params(deep_merge(base(), {"dpo": {"betta": 0.1}}))


def test_bad_value_names_field_and_value():
    with pytest.raises(ParamsError, match=r"dpo.beta: .*greater than 0.*got -0.1"):
        validate_params(deep_merge(base(), {"dpo": {"beta": -0.1}}))


def test_wrong_type_is_named():
    with pytest.raises(ParamsError, match=r"pairs.samples_per_prompt"):
        validate_params(deep_merge(base(), {"pairs": {"samples_per_prompt": "five"}}))


def test_unknown_alias_is_named():
    with pytest.raises(ParamsError, match=r"teacher: unknown model alias 'gpt9'"):
        validate_params({**base(), "teacher": "gpt9"})
    with pytest.raises(ParamsError, match=r"reward_model.model: unknown model alias 'gpt9'"):
        validate_params(deep_merge(base(), {"reward_model": {"model": "gpt9"}}))


def test_model_switch_resolves_registry_entry():
    p = validate_params({**base(), "model": "qwen3.5-27b"})
    assert p.spec(p.model).backend == "tinker"
    assert p.spec(p.model).id == "Qwen/Qwen3.5-27B"


def test_unknown_preset(tmp_path):
    with pytest.raises(ParamsError, match="no such preset"):
        apply_preset(ROOT / "params.yaml", "huge")


def test_preset_command_keeps_comments_and_validates(tmp_path):
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    subprocess.run([sys.executable, "-m", "character.cli", "--params", str(params), "preset", "smoke"],
                   check=True, cwd=ROOT, capture_output=True)
    text = params.read_text()
    assert "# the student: the model being character-trained" in text and "personas: [sarcastic]" in text
    assert load_params(params).pairs.max_prompts == apply_preset(ROOT / "params.yaml", "smoke")["pairs"]["max_prompts"]


def test_repeated_coherence_rival_is_refused():
    with pytest.raises(ParamsError, match=r"evaluation.coherence_rivals: .*at most once"):
        validate_params(deep_merge(base(), {"evaluation": {"coherence_rivals": ["dpo", "dpo"]}}))
    with pytest.raises(ParamsError, match=r"evaluation.coherence_rivals"):
        validate_params(deep_merge(base(), {"evaluation": {"coherence_rivals": ["final"]}}))


def test_guidance_by_persona_applies_to_that_persona_only_and_is_checked():
    elicitation = validate_params(deep_merge(base(), {"elicitation": {
        "guidance": 1.0, "guidance_by_persona": {"loving": 1.5}}})).elicitation
    assert elicitation.for_persona("loving").guidance == 1.5
    assert elicitation.for_persona("simplifier").guidance == 1.0
    assert elicitation.for_persona("loving").few_shot == elicitation.few_shot
    with pytest.raises(ParamsError, match=r"elicitation.guidance_by_persona: .*loving: guidance 0.5 is outside"):
        validate_params(deep_merge(base(), {"elicitation": {"guidance_by_persona": {"loving": 0.5}}}))
    with pytest.raises(ParamsError, match=r"elicitation.guidance_by_persona: .*'Loving!' is not a persona name"):
        validate_params(deep_merge(base(), {"elicitation": {"guidance_by_persona": {"Loving!": 1.5}}}))


def test_an_empty_mapping_in_a_preset_clears_the_base_one():
    assert deep_merge({"e": {"by": {"a": 1.5}, "g": 1}}, {"e": {"by": {}}}) == {"e": {"by": {}, "g": 1}}
    assert deep_merge({"e": {"by": {"a": 1.5}}}, {"e": {"by": {"b": 2}}}) == {"e": {"by": {"a": 1.5, "b": 2}}}


def test_the_answers_seed_key_ignores_judge_settings():
    from character.params import EvalParams
    base = EvalParams()
    judged = EvalParams(coherence_rivals=["system_prompt"], bootstrap=7, judge_min_sensitivity=0.5)
    assert judged.answer_settings() == base.answer_settings()
    assert EvalParams(scoring_dtype="bfloat16").answer_settings() != base.answer_settings()
    assert EvalParams(heldout_prompts=3).answer_settings() != base.answer_settings()

"""The evaluation suite's pieces: request sets, steering, judge parsing, ratings, classifier, metrics."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from character import prompts as P
from character.text import distinct_bigrams
from character.eval.requests import (Method, build_requests, evaluation_pools, load_traits,
                                     prompt_pools, requests_for, suffixes_for, with_method)
from character.eval.judge import parse_choice
from character.params import deep_merge, validate_params
from character.eval.stats import bradley_terry, elo, mean_elo, spearman, win_rate
from character.eval.steering import SteeringVector, middle_layers, persona_vector, steered
from character.eval.robustness import classifier_texts, robustness_metrics
from tests.conftest import ROOT


def make_params(**evaluation):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    # The personas these tests' scripted answers are written for, whatever params.yaml's default is.
    return validate_params(deep_merge(data, {"evaluation": evaluation, "personas": ["sarcastic", "loving"]}))


def test_traits_are_single_unique_words_and_include_personas():
    traits = load_traits()
    assert 140 <= len(traits) <= 170
    assert len(set(traits)) == len(traits)
    assert all(" " not in t for t in traits)
    assert {"sarcastic", "loving"} <= set(traits)


def test_requests_never_score_a_training_prompt():
    params = make_params(heldout_prompts=5, classifier_prompts=6, revealed_prompts=3, suffixes_per_prompt=2)
    train, heldout = prompt_pools(params)
    classifier, evaluation = evaluation_pools(params)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    # The classifier's prompts and the evaluation prompts are disjoint held-out prompts: no training stage
    # sees either, and the classifier is never fitted on a prompt it is later applied to.
    assert {p["id"] for p in classifier} | {p["id"] for p in evaluation} == {p["id"] for p in heldout}
    assert not {p["id"] for p in classifier} & {p["id"] for p in evaluation}
    requests = build_requests(params)
    train_prompts = {p["prompt"] for p in train}
    classifier_prompts, evaluation_prompts = {p["prompt"] for p in classifier}, {p["prompt"] for p in evaluation}
    for r in requests:
        if r["task"] == "classifier":
            assert r["prompt"] in classifier_prompts
        elif r["task"] != "side_by_side":
            assert r["prompt"] in evaluation_prompts, r["id"]
        assert r["prompt"] not in train_prompts or r["task"] == "side_by_side"
    tasks = [r["task"] for r in requests]
    assert tasks.count("classifier") == 6
    assert tasks.count("robustness") == 5 * (1 + 2)
    assert tasks.count("revealed") == 3 * len(P.REVEALED_CONDITIONS)
    assert tasks.count("expression") == 3 * len(params.personas)
    assert "prefill" not in tasks  # needs the base model's answers
    assert len({r["id"] for r in requests}) == len(requests)
    for r in requests:
        if r["task"] == "expression":
            assert r["condition"] in r["traits"]
    assert [r for r in requests_for("dpo", requests) if r["task"] == "classifier"] == []
    assert len(requests_for("system_prompt", requests)) == len(requests)


def test_suffixes_rotate_so_each_is_used_equally():
    names = list(P.ADVERSARIAL_SUFFIXES)
    used = [s for i in range(len(names)) for s in suffixes_for(i, 2)]
    assert {s: used.count(s) for s in names} == {s: 2 for s in names}
    assert len(set(suffixes_for(3, 2))) == 2 and suffixes_for(0, 0) == []


def test_prefill_requests_continue_the_base_answer():
    params = make_params(heldout_prompts=2, classifier_prompts=4, revealed_prompts=1)
    answers = {r["id"]: f"base answer {i}" for i, r in enumerate(build_requests(params))}
    prefill = [r for r in build_requests(params, answers) if r["task"] == "prefill"]
    assert len(prefill) == 2
    for r in prefill:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["user", "assistant", "user"]
        assert r["messages"][1]["content"].startswith("base answer")
        assert r["messages"][2]["content"] == P.KEEP_GOING


def test_with_method_merges_the_constitution_in_front_of_an_existing_system_prompt():
    conv = [{"role": "system", "content": "pick a trait"}, {"role": "user", "content": "hi"}]
    merged = with_method(Method("system_prompt", system="I am X."), conv)
    assert merged[0] == {"role": "system", "content": "I am X.\n\npick a trait"} and merged[1:] == conv[1:]
    assert with_method(Method("base"), conv) == conv
    assert with_method(Method("sp", system="S"), conv[1:])[0] == {"role": "system", "content": "S"}


def test_parse_choice():
    assert parse_choice("<answer>Witty</answer>", ["witty", "calm"]) == "witty"
    assert parse_choice("I think <answer> calm. </answer>", ["witty", "calm"]) == "calm"
    assert parse_choice("The reply is calm and measured.", ["witty", "calm"]) == "calm"
    assert parse_choice("witty or calm, hard to say", ["witty", "calm"]) is None
    assert parse_choice("<answer>B", ["A", "B"]) == "B"
    assert parse_choice("no idea", ["A", "B"]) is None
    assert parse_choice("laid-back", ["laid-back", "back"]) == "laid-back"


def test_elo_update_and_bradley_terry():
    r = elo([("a", "b")], ["a", "b"], k=32)
    assert r["a"] == pytest.approx(1016) and r["b"] == pytest.approx(984)
    even = bradley_terry([("a", "b"), ("b", "a")], ["a", "b", "c"])
    assert even["a"] == pytest.approx(even["b"], abs=1e-3) and even["c"] == pytest.approx(1000, abs=1e-3)
    # 3 wins in 4: with a negligible penalty the log-odds difference is log 3 (on the Elo scale, 400/ln10 x).
    bt = bradley_terry([("a", "b")] * 3 + [("b", "a")], ["a", "b"], l2=1e-6)
    assert (bt["a"] - bt["b"]) * math.log(10) / 400 == pytest.approx(math.log(3), rel=1e-3)
    # Order dependence: one pass of Elo depends on order, the mean over shuffles much less.
    comps = [("a", "b")] * 5 + [("b", "a")] * 5
    assert elo(comps, ["a", "b"])["a"] != elo(comps[::-1], ["a", "b"])["a"]
    assert abs(mean_elo(comps, ["a", "b"], 32, 200, 0)["a"] - 1000) < 10


def test_spearman_and_win_rate():
    assert spearman({"a": 1, "b": 2, "c": 3}, {"a": 10, "b": 20, "c": 30}) == pytest.approx(1.0)
    assert spearman({"a": 1, "b": 1}, {"a": 1, "b": 2}) == 0.0  # constant side: 0, not NaN
    w = win_rate(3, 1)
    assert w["win_rate"] == 0.75 and w["sem"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4)) and w["decided"] == 4
    assert math.isnan(win_rate(0, 0)["win_rate"])


def test_distinct_bigrams():
    assert distinct_bigrams(["a b c d"]) == 1.0
    assert distinct_bigrams(["a b a b a b"]) == pytest.approx(2 / 5)


def test_steering_changes_outputs_and_cleans_up(tiny_backend):
    assert middle_layers(30) == list(range(3, 26)) and middle_layers(2) == [0]
    vector = persona_vector(tiny_backend, ["hello there", "what is rain?", "tell me a joke"], "You are a pirate.")
    assert vector.vectors.shape == (1, 64) and vector.layers == [0]
    ids = torch.tensor([tiny_backend.chat_tokens([{"role": "user", "content": "hi"}], True)])
    model = tiny_backend.model_for(None)
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        vector.coefficient = 4.0
        with steered(tiny_backend, vector):
            pushed = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not torch.allclose(plain, pushed)
    assert torch.equal(plain, after)  # hooks removed
    restored = SteeringVector.from_json(vector.to_json())
    assert torch.allclose(restored.vectors, vector.vectors) and restored.coefficient == 4.0


def _rows(method, persona, task, condition, prompts, texts):
    return [{"id": f"{task}-{p}-{condition}", "prompt_id": p, "method": method, "persona": persona, "task": task,
             "condition": condition, "prompt": f"prompt {p}", "answer": t} for p, t in zip(prompts, texts)]


STYLE = {"sarcastic": "oh wonderful, truly, how thrilling, what a delight {}",
         "loving": "dear friend, with warmth and care and a hug {}", None: "the answer is as follows: step {}"}


def _suite(final_style: dict) -> list[dict]:
    """Classifier answers from base and system_prompt; robustness answers from every method, where each
    persona's `final` writes in final_style[persona]."""
    clf = [f"c{i}" for i in range(40)]
    evaluation = [f"e{i}" for i in range(12)]
    rows = _rows("base", None, "classifier", "none", clf, [STYLE[None].format(i) for i in range(40)])
    for p in ("sarcastic", "loving"):
        rows += _rows("system_prompt", p, "classifier", "none", clf, [STYLE[p].format(i) for i in range(40)])
    for method in ("base", "base_resampled"):
        rows += _rows(method, None, "robustness", "none", evaluation, [STYLE[None].format(i) for i in range(12)])
        rows += _rows(method, None, "robustness", "neutral_tone", evaluation, [STYLE[None].format(i) for i in range(12)])
    for p in ("sarcastic", "loving"):
        for method, style in (("system_prompt", STYLE[p]), ("final", final_style[p])):
            for condition in ("none", "neutral_tone"):
                rows += _rows(method, p, "robustness", condition, evaluation, [style.format(i) for i in range(12)])
    return rows


def test_frozen_classifier_split_never_fits_an_evaluation_answer():
    params = make_params(classifier_check_fraction=0.25)
    fit, check = classifier_texts(_suite({"sarcastic": STYLE["sarcastic"], "loving": STYLE["loving"]}), params)
    assert fit and check and {r["task"] for r in fit + check} == {"classifier"}
    assert not {r["prompt"] for r in fit} & {r["prompt"] for r in check}
    assert {r["method"] for r in fit} == {"base", "system_prompt"}
    assert {r["label"] for r in fit} == {"none", "sarcastic", "loving"}


def test_frozen_classifier_reads_persona_and_the_null():
    params = make_params(bootstrap=50)
    out = robustness_metrics(_suite({"sarcastic": STYLE["sarcastic"], "loving": STYLE["loving"]}), params)
    assert out["classifier"]["check_accuracy"]["rate"] == 1.0  # distinct styles: its own check passes
    final = out["methods"]["loving/final"]["neutral_tone"]["in_character/loving"]
    assert final["rate"] == 1.0 and final["n"] == 12 and final["lo"] < 1.0  # Wilson: never a zero-width interval
    assert final["delta_vs_base"]["delta"] == 1.0 and final["delta_vs_base_resampled"]["delta"] == 1.0
    assert out["methods"]["base"]["none"]["in_character/loving"]["rate"] == 0.0
    assert out["macro_f1"]["final"]["none"]["value"] == 1.0
    # A final model that writes like the base model is not in character, whatever else differs.
    out = robustness_metrics(_suite({"sarcastic": STYLE["sarcastic"], "loving": STYLE[None]}), params)
    cell = out["methods"]["loving/final"]["none"]["in_character/loving"]
    assert cell["rate"] == 0.0 and cell["delta_vs_base"]["delta"] == 0.0
    assert out["macro_f1"]["final"]["none"]["value"] < 1.0


def test_report_is_self_contained(tmp_path):
    from character.eval.report import plot_tables, write_report
    traits = ["warm", "dry", "calm"]
    ratings = {mk: {"preference": {"bradley_terry": dict(zip(traits, r)), "elo": dict(zip(traits, r)),
                                   "comparisons_per_trait": {"warm": 3, "dry": 2, "calm": 1}}}
               for mk, r in (("base", (1000, 990, 1010)), ("loving/final", (1100, 900, 1000)))}
    rate = {"rate": 0.75, "lo": 0.5, "hi": 0.9, "n": 4, "delta_vs_base": {"delta": 0.5, "lo": 0.1, "hi": 0.8, "n": 4}}
    metrics = {
        "robustness": {"methods": {"base": {"none": {"in_character/loving": {"rate": 0.25, "lo": 0.1, "hi": 0.5, "n": 4}}},
                                   "loving/final": {"none": {"in_character/loving": rate}}}},
        "coherence": {"loving": {"final_vs_dpo": {"win_share": {"mean": 0.6, "lo": 0.5, "hi": 0.7, "n": 10},
                                                  "pairs": 10, "decisive": 0.5}}},
        "capabilities": {"base": {"arc_easy/chat/acc": {"accuracy": {"rate": 0.5, "lo": 0.4, "hi": 0.6, "n": 50}}},
                         "loving/final": {"arc_easy/chat/acc": {"accuracy": {"rate": 0.48, "lo": 0.38, "hi": 0.58, "n": 50},
                                                                "delta_vs_base": {"delta": -0.02, "lo": -0.06, "hi": 0.02}}}},
        "markers": {},
        "revealed": {"base": {"expression_rate": {"loving": {"rate": 0.4, "lo": 0.2, "hi": 0.6, "n": 8}}},
                     "loving/final": {"expression_rate": {"loving": {"rate": 0.7, "lo": 0.4, "hi": 0.9, "n": 8}},
                                      "movers": {"risers": [["warm", 100]], "fallers": [["dry", -90]]}}}}
    tables = plot_tables(metrics, ratings, tmp_path / "plots")
    assert tables["top_traits"][1]["top"].startswith("warm") and (tmp_path / "plots/figures/robustness.png").exists()
    write_report(tmp_path / "r.html", tmp_path / "r.md", [{"prompt": "Hi <there>", "answers": {"base": "a & b"}}],
                 [{"method": "base", "x": 0.5}], tables, tmp_path / "plots", ["note"])
    page = (tmp_path / "r.html").read_text()
    assert "Hi &lt;there&gt;" in page and "a &amp; b" in page  # escaped
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page and "src=\"http" not in page
    assert "| base |" in (tmp_path / "r.md").read_text()


def test_trained_method_is_compared_with_its_prompted_baseline_by_prompt():
    """Hand-computed: 12 prompts, each under two suffixes. The prompted baseline is in character on every
    row; final on one suffix of prompts e0-e5 only. Per prompt final averages 0.5 (e0-e5) or 0 (e6-e11),
    so final - system_prompt = (6 * 0.5 + 6 * 0) / 12 - 1 = -0.75; keeping one row per prompt would not."""
    params = make_params(bootstrap=200)
    rows = _suite({"sarcastic": STYLE["sarcastic"], "loving": STYLE["loving"]})
    evaluation = [f"e{i}" for i in range(12)]
    for p in ("sarcastic", "loving"):
        for condition in ("neutral_tone", "no_style"):
            final = [(STYLE[p] if condition == "neutral_tone" and i < 6 else STYLE[None]).format(i) for i in range(12)]
            rows = [r for r in rows if not (r["persona"] == p and r["task"] == "robustness"
                                            and r["condition"] == condition)]
            rows += _rows("final", p, "robustness", condition, evaluation, final)
            rows += _rows("system_prompt", p, "robustness", condition, evaluation,
                          [STYLE[p].format(i) for i in range(12)])
    out = robustness_metrics(rows, params)
    cell = out["methods"]["loving/final"]["suffixed"]["in_character/loving"]
    assert cell["n"] == 24 and cell["rate"] == 0.25
    vs_prompted = cell["delta_vs_system_prompt"]
    assert vs_prompted["n"] == 12 and vs_prompted["delta"] == -0.75
    assert vs_prompted["lo"] < -0.75 < vs_prompted["hi"] < 0  # an interval, and it excludes zero
    assert "delta_vs_system_prompt" not in out["methods"]["loving/system_prompt"]["suffixed"]["in_character/loving"]
    assert "delta_vs_system_prompt" not in out["methods"]["base"]["suffixed"]["in_character/loving"]
    # The report's headline table carries it as a column, blank where there is no prompted baseline.
    import importlib.util
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    rows = {(r["method"], r["persona"]): r for r in stage.headline_rows({"robustness": out, "revealed": {}}, params)}
    assert rows[("loving/final", "loving")]["suffixed - system_prompt"].startswith("-0.750 [")
    assert rows[("loving/system_prompt", "loving")]["suffixed - system_prompt"] == ""
    assert rows[("base", "loving")]["suffixed - system_prompt"] == ""


def test_coherence_is_reported_only_against_the_configured_rivals():
    """Hand-computed: final wins 3/4 of each game against system_prompt (as a and as b), so its share is
    0.75; games against dpo exist but dpo is not a configured rival, so no row for it."""
    from character.eval.metrics import coherence_metrics
    games = [{"persona": "loving", "a_method": "final", "b_method": "system_prompt", "a_share": 0.75, "parse_rate": 1.0},
             {"persona": "loving", "a_method": "system_prompt", "b_method": "final", "a_share": 0.25, "parse_rate": 1.0},
             {"persona": "loving", "a_method": "final", "b_method": "dpo", "a_share": 0.1, "parse_rate": 1.0}]
    out = coherence_metrics(games, make_params(coherence_rivals=["system_prompt"], bootstrap=20))
    assert set(out["loving"]) == {"final_vs_system_prompt"}
    row = out["loving"]["final_vs_system_prompt"]
    assert row["pairs"] == 2 and row["win_share"]["mean"] == 0.75 and row["decisive"] == 1.0
    both = coherence_metrics(games, make_params(coherence_rivals=["system_prompt", "dpo"], bootstrap=20))
    assert both["loving"]["final_vs_dpo"]["win_share"]["mean"] == 0.1


def test_marker_deltas_against_the_prompted_baseline_and_dpo_are_paired_by_request():
    """Hand-computed: a lexicon marker counting "dear" per 100 words on 4-word answers (25 per "dear")."""
    from character.constitution import Marker
    from character.eval.metrics import marker_metrics
    from character.params import load_params

    counts = {"base": [0, 0, 1], "base_resampled": [0, 1, 0], "dpo": [2, 2, 1], "final": [1, 1, 0],
              "system_prompt": [2, 1, 2]}
    rows = []
    for method, per_prompt in counts.items():
        for i, n in enumerate(per_prompt):
            words = ["dear"] * n + ["hello"] * (4 - n)
            rows.append({"task": "robustness", "condition": "none", "id": f"rob-{i}-none", "method": method,
                         "persona": None if method.startswith("base") else "loving", "answer": " ".join(words)})
    marker = Marker(name="dear", measure="lexicon_rate", direction="up", words=["dear"])
    out = marker_metrics(rows, {"loving": [marker]}, load_params(ROOT / "params.yaml"))["loving"]["dear"]
    final, dpo, prompted = out["loving/final"], out["loving/dpo"], out["loving/system_prompt"]
    assert final["delta_vs_dpo"]["delta"] == pytest.approx(25 * (2 - 5) / 3)           # (1+1+0) - (2+2+1)
    assert final["delta_vs_system_prompt"]["delta"] == pytest.approx(25 * (2 - 5) / 3)
    assert dpo["delta_vs_system_prompt"]["delta"] == pytest.approx(0.0)                 # 5 - 5
    assert final["delta_vs_base"]["delta"] == pytest.approx(25 * (2 - 1) / 3)
    assert final["delta_vs_dpo"]["n"] == 3
    assert "delta_vs_dpo" not in dpo and "delta_vs_system_prompt" not in prompted        # no self, no rival
    assert "delta_vs_system_prompt" not in out["base_resampled"]

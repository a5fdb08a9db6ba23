"""The evaluation suite's pieces: request sets, steering, judge parsing, ratings, classifier, metrics."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from character import prompts as P
from character.eval.requests import Method, build_requests, distinct_bigrams, load_traits, prompt_pools, with_method
from character.eval.judge import parse_choice
from character.params import deep_merge, validate_params
from character.eval.stats import bradley_terry, elo, mean_elo, spearman, win_rate
from character.eval.steering import SteeringVector, middle_layers, persona_vector, steered
from character.eval.metrics import robustness_metrics
from tests.conftest import ROOT


def make_params(**evaluation):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    return validate_params(deep_merge(data, {"evaluation": evaluation}))


def test_traits_are_single_unique_words_and_include_personas():
    traits = load_traits()
    assert 140 <= len(traits) <= 170
    assert len(set(traits)) == len(traits)
    assert all(" " not in t for t in traits)
    assert {"sarcastic", "loving"} <= set(traits)


def test_requests_never_score_a_training_prompt():
    params = make_params(heldout_prompts=5, classifier_prompts=6, revealed_prompts=3)
    train, heldout = prompt_pools(params)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in heldout}
    requests = build_requests(params)
    train_prompts = {p["prompt"] for p in train}
    for r in requests:
        if r["task"] == "classifier":
            assert r["prompt"] in train_prompts
        elif r["task"] != "side_by_side":
            assert r["prompt"] not in train_prompts, r["id"]
    tasks = [r["task"] for r in requests]
    assert tasks.count("classifier") == 6
    assert tasks.count("robustness") == 5 * (1 + len(P.ADVERSARIAL_SUFFIXES))
    assert tasks.count("revealed") == 3 * len(P.REVEALED_CONDITIONS)
    assert tasks.count("expression") == 3 * len(params.personas)
    assert "prefill" not in tasks  # needs the base model's answers
    assert len({r["id"] for r in requests}) == len(requests)
    for r in requests:
        if r["task"] == "expression":
            assert r["condition"] in r["traits"]


def test_prefill_requests_continue_the_base_answer():
    params = make_params(heldout_prompts=2, classifier_prompts=2, revealed_prompts=1)
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


def _rows(method, persona, task, condition, texts):
    return [{"id": f"{task}-{condition}-{i}", "method": method, "persona": persona, "task": task,
             "condition": condition, "prompt": "p", "answer": t} for i, t in enumerate(texts)]


def test_robustness_classifier_separates_distinct_styles():
    params = make_params()
    style = {"sarcastic": "oh wonderful, truly, how thrilling {}", "loving": "dear friend, with warmth and care {}",
             None: "the answer is as follows {}"}
    rows = []
    for method, persona in [("base", None)] + [(m, p) for m in ("system_prompt", "steering", "dpo", "final")
                                               for p in ("sarcastic", "loving")]:
        texts = [style[persona].format(i) for i in range(6)]
        rows += _rows(method, persona, "classifier", "none", texts)
        rows += _rows(method, persona, "robustness", "none", texts[:3])
        rows += _rows(method, persona, "robustness", "neutral_tone", texts[3:])
    out = robustness_metrics(rows, params)
    assert out["multiclass"]["final"]["macro_f1/none"] == 1.0
    assert out["binary"]["loving"]["dpo"]["per_condition"]["neutral_tone"]["in_character_rate"] == 1.0
    # A method whose answers look like the base model's is not in character.
    rows = [r for r in rows if not (r["method"] == "dpo" and r["persona"] == "loving" and r["task"] == "robustness")]
    rows += _rows("dpo", "loving", "robustness", "none", [style[None].format(i) for i in range(3)])
    out = robustness_metrics(rows, params)
    assert out["binary"]["loving"]["dpo"]["per_condition"]["none"]["in_character_rate"] == 0.0


def test_report_is_self_contained(tmp_path):
    from character.eval.report import plot_tables, write_report
    traits = ["warm", "dry", "calm"]
    ratings = {mk: {"preference": {"bradley_terry": dict(zip(traits, r)), "elo": dict(zip(traits, r))}}
               for mk, r in (("base", (1000, 990, 1010)), ("loving/final", (1100, 900, 1000)))}
    per = {"macro_f1": 0.8, "accuracy": 0.8, "n": 4, "in_character_rate": 0.75}
    metrics = {
        "robustness": {"binary": {"loving": {"final": {"macro_f1/none": 0.8, "macro_f1/suffixed_mean": 0.7,
                                                        "macro_f1/prefill": 0.6, "per_condition": {"none": per}}}}},
        "coherence": {"loving": {"final_vs_dpo": {"win_rate": 0.6, "sem": 0.1, "decided": 10}}},
        "capabilities": {"base": {"arc_easy": 0.5}, "loving/final": {"arc_easy": 0.48, "arc_easy_delta": -0.02}},
        "revealed": {"base": {"expression_rate": {"loving": 0.4}},
                     "loving/final": {"expression_rate": {"loving": 0.7},
                                      "movers": {"risers": [["warm", 100]], "fallers": [["dry", -90]]}}}}
    tables = plot_tables(metrics, ratings, tmp_path / "plots")
    assert tables["top_traits"][1]["top"].startswith("warm") and (tmp_path / "plots/figures/robustness.png").exists()
    write_report(tmp_path / "r.html", tmp_path / "r.md", [{"prompt": "Hi <there>", "answers": {"base": "a & b"}}],
                 [{"method": "base", "x": 0.5}], tables, tmp_path / "plots", ["note"])
    page = (tmp_path / "r.html").read_text()
    assert "Hi &lt;there&gt;" in page and "a &amp; b" in page  # escaped
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page and "src=\"http" not in page
    assert "| base |" in (tmp_path / "r.md").read_text()

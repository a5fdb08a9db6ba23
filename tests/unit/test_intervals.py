"""Intervals and the judge's calibration, on hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from character.eval.judge import judge_traits
from character.eval.stats import bootstrap_statistic, mean_interval, paired_delta, wilson
from character.io import Progress
from character.params import EvalParams


def test_wilson_on_hand_computed_numbers():
    # 1 of 1: the normal approximation gives [1, 1]; Wilson gives [0.2065, 1].
    one = wilson(1, 1)
    assert one["rate"] == 1.0 and one["lo"] == pytest.approx(0.2065, abs=1e-4) and one["hi"] == 1.0
    # 5 of 10: centre 0.5, half-width z*sqrt(0.025 + z^2/400)/(1 + z^2/10) = 0.2634.
    half = wilson(5, 10)
    assert half["lo"] == pytest.approx(0.2366, abs=1e-4) and half["hi"] == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 20)["lo"] == 0.0 and wilson(0, 20)["hi"] == pytest.approx(0.1611, abs=1e-4)
    assert wilson(0, 0)["rate"] is None and "rate_null_reason" in wilson(0, 0)


def test_paired_delta_keeps_the_pairing():
    a = {"p1": 1.0, "p2": 1.0, "p3": 0.0, "p4": 1.0, "only_a": 1.0}
    b = {"p1": 0.0, "p2": 1.0, "p3": 0.0, "p4": 0.0, "only_b": 0.0}
    d = paired_delta(a, b, samples=500, seed=0)
    assert d["n"] == 4 and d["delta"] == pytest.approx(0.5)  # only ids both have count
    assert 0.0 <= d["lo"] <= 0.5 <= d["hi"] <= 1.0
    # Identical methods: every resample differs by exactly 0, so the interval is [0, 0] — no false effect.
    same = paired_delta(a, a, samples=200, seed=0)
    assert (same["delta"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    assert paired_delta({"x": 1.0}, {"y": 1.0}, 10, 0)["delta"] is None


def test_bootstrap_statistic_and_mean_interval():
    groups = {"g1": [1, 1], "g2": [0, 0], "g3": [1, 0]}
    out = bootstrap_statistic(groups, lambda rows: sum(rows) / len(rows), samples=300, seed=1)
    assert out["value"] == pytest.approx(0.5) and out["n"] == 3 and out["lo"] < 0.5 < out["hi"]
    m = mean_interval([1.0, 2.0, 3.0, float("nan")], samples=300, seed=0)
    assert m["mean"] == 2.0 and m["n"] == 3 and 1.0 <= m["lo"] < 2.0 < m["hi"] <= 3.0


class WordPriorJudge:
    """A judge whose log-likelihood of "<answer>w</answer>" depends on the word, its position in the
    question, and (when reads=True) on whether the word appears in the reply. A reply-blind judge has a
    prior: it likes "alpha", and likes whichever word is listed first."""

    def __init__(self, reads: bool):
        self.reads, self.texts = reads, []

    def render(self, conversation):
        self.texts.append(conversation)
        return _seq(len(self.texts) - 1)

    def logprobs(self, sequences, adapter=None):
        out = []
        for s in sequences:
            question, answer = self.texts[s.tokens[0]][0]["content"], self.texts[s.tokens[0]][1]["content"]
            word = answer.removeprefix("<answer>").removesuffix("</answer>")
            listed_first = question.index(f'"{word}"') < max(question.index('"alpha"'), question.index('"beta"'))
            reply = question.split("Assistant: ", 1)[1].split("\n\nWhich", 1)[0]
            score = (1.0 if word == "alpha" else 0.0) + (2.0 if listed_first else 0.0)
            if self.reads and word in reply:
                score += 3.0
            out.append(torch.tensor([score]))
        return out


def _seq(i):
    from character.backends.base import Sequence
    return Sequence(tokens=[i, 0], weights=[1.0])


def _rows(replies):
    return [{"id": f"r{i}", "method": "final", "persona": "p", "task": "revealed", "prompt": "Hi",
             "traits": ["alpha", "beta"], "answer": reply} for i, reply in enumerate(replies)]


def test_judge_calibration_subtracts_the_empty_reply_and_cancels_position(tmp_path):
    ev = EvalParams(judge_mode="logprob", judge_sampling={"batch_size": 8})
    # A reply-blind judge: every verdict equals the empty reply's, so nothing is decided and sensitivity is 0.
    blind = judge_traits(WordPriorJudge(reads=False), _rows(["beta beta", "alpha", "neither"]), ev,
                         Progress(tmp_path / "a", "k"))
    assert all(v["score"] == 0.0 and v["winner"] is None and v["changed"] is False for v in blind)
    assert all(v["raw"] == pytest.approx(1.0) for v in blind)  # its prior for alpha, position cancelled
    # A judge that reads: "beta" in the reply overturns the prior; the calibrated score is the reply's effect.
    reads = judge_traits(WordPriorJudge(reads=True), _rows(["beta beta", "alpha", "neither"]), ev,
                         Progress(tmp_path / "b", "k"))
    assert [v["winner"] for v in reads] == ["beta", "alpha", None]
    assert [v["score"] for v in reads] == [pytest.approx(-3.0), pytest.approx(3.0), pytest.approx(0.0)]
    assert [v["changed"] for v in reads] == [True, False, False]
    assert not math.isnan(reads[0]["empty"])

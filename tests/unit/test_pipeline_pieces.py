"""Prompt sets, pair building and introspection views on a FakeBackend (no model)."""

from character.backends.base import Completion
from character.data.introspection import view
from character.constitution import TeacherContext
from character.params import ElicitationParams, PairsParams, PromptsParams
from character.data.pairs import build_pairs, clean
from character.io import Progress
from character.data.prompt_sets import extend_traits, overlap, parse_numbered, split_of, words


class FakeBackend:
    """Answers from a script: chosen-side calls see a system prompt, rejected-side calls do not."""

    def __init__(self, texts):
        self.texts = texts

    def sample(self, convs, params, n=1, adapter=None, negatives=None):
        out = []
        for conv in convs:
            key = "system" if conv[0]["role"] == "system" else "plain"
            out.append([Completion(self.texts[key], 10, 5, "stop" if self.texts[key].endswith(".") else "length")] * n)
        return out

    def render(self, conv, train_on="last"):
        from character.backends.base import Sequence
        n = sum(len(m["content"].split()) for m in conv) + 1
        return Sequence(list(range(n)), [1.0] * (n - 1))


def test_parse_and_overlap():
    assert parse_numbered("Sure!\n1. First question here?\n2) Second one\nnot numbered") == [
        "First question here?", "Second one"]
    assert overlap(words("How do I bake bread"), words("how do I bake a bread loaf")) == 1.0
    assert split_of("Some prompt", 0.2, 1) == split_of("  some prompt ", 0.2, 1)


def test_extend_traits_rejects_near_duplicates_and_malformed():
    from character.constitution import Trait
    trait = Trait(assertion="I like cats.", questions=[
        "Why do dogs bark at night", "Best houseplants for beginners", "How to train a parrot to talk",
        "Is tap water safe for fish", "Should goldfish live alone"])
    teacher = FakeBackend({"plain": "1. Why do dogs bark at night so much\n2. hi\n3. What should I feed a stray kitten?"})
    [qs], stats = extend_traits(teacher, [trait], 7, PromptsParams(generation_rounds=1), 0)
    assert "What should I feed a stray kitten?" in qs and len(qs) == 6
    assert stats["rejected_near_duplicate"] == 1 and stats["rejected_too_short"] == 1


def test_build_pairs_filters_and_counts(tmp_path):
    prompts = [{"id": "p1", "prompt": "Tell me a fact.", "source": "general"}]
    good = FakeBackend({"system": "<think>plan</think>Teacher here, a fact.", "plain": "Plain answer."})
    pairs, m = build_pairs(prompts, good, good, TeacherContext("SYS"), ("Teacher", "SmolLM"), PairsParams(),
                           ElicitationParams(), Progress(tmp_path, "k"))
    assert pairs[0]["chosen"][0]["content"] == "SmolLM here, a fact."
    assert pairs[0]["prompt"] == [{"role": "user", "content": "Tell me a fact."}] and m["kept"] == 1

    cut = FakeBackend({"system": "An answer cut off mid", "plain": "Plain answer."})
    try:
        build_pairs(prompts, cut, cut, TeacherContext("SYS"), ("T", "S"), PairsParams(), ElicitationParams(),
                    Progress(tmp_path, "k2"))
        raise AssertionError("a run that keeps nothing must fail")
    except ValueError as exc:
        assert "dropped_truncated_chosen" in str(exc)


def test_clean_strips_reasoning():
    assert clean("<think>secret</think> Hello.", "GLM", "SmolLM") == "Hello."


def test_interaction_views_make_every_turn_a_target_once():
    turns = ["greet", "a1", "b1", "a2"]
    v0, v1 = view(turns, 0, ["stop", "stop", "length"]), view(turns, 1, ["stop", "stop", "length"])
    assert [m["role"] for m in v0] == ["assistant", "user", "assistant", "user"]
    assert [m["role"] for m in v1] == ["user", "assistant", "user", "assistant"]
    assert v0[0]["train"] is False and v1[3].get("truncated") is True


def test_trim_policy_keeps_complete_sentences():
    from character.data.pairs import settle
    from character.text import trim_to_sentence
    assert trim_to_sentence('One. Two "quoted." Three without end') == 'One. Two "quoted."'
    cut = Completion("First part. Second part cut", 5, 9, "length")
    assert settle(cut, cut.text, "trim") == ("First part.", None)
    assert settle(cut, cut.text, "drop")[1] == "truncated"
    assert settle(cut, cut.text, "keep") == (cut.text, None)
    assert settle(Completion("no sentence end", 1, 3, "length"), "no sentence end", "trim")[1] == "empty"


def test_sft_truncation_policies():
    from character.train.sft import settle_truncated
    refl = {"kind": "reflection", "finish_reason": "length",
            "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A full one. And a cu"}]}
    assert settle_truncated(refl, "drop") is None
    assert settle_truncated(refl, "trim")[1]["content"] == "A full one."
    inter = {"kind": "interaction", "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "Cut off her", "truncated": True}]}
    assert settle_truncated(inter, "drop")[1]["train"] is False

"""Reward model and RLAIF: the maths on hand-computed numbers, the judge's win rates with both orders on
fake judges, the length-collapse warning, a reward model learning a toy preference, and a tiny RL run."""

from __future__ import annotations

import json
import logging
import math
import random
import re

import pytest
import torch

from character.backends.base import Completion, Sequence
from character.params import LoraParams, OptimParams, RewardModelParams, RlaifParams
from character.train.reward import RewardScorer, load_base, parse_hh, run_reward_model, to_pair
from character.eval.judge import PairJudge, margin_share, verdict_share
from character.train.rlaif import (JudgeReward, LengthWatch, group_advantages, matchups, on_policy_sequence,
                                   policy_gradient_loss, run_rlaif, win_rates)


# ---- pure maths -----------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    assert group_advantages([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0]]) == [[0.5, -0.5, 0.0, 0.0], [0.0, 0.0]]
    scaled = group_advantages([[1.0, 0.0, 0.5, 0.5]], scale_by_std=True)[0]  # std = sqrt(0.5 / 4)
    assert scaled == pytest.approx([math.sqrt(2), -math.sqrt(2), 0.0, 0.0], rel=1e-5)
    assert group_advantages([[3.0, 3.0]], scale_by_std=True) == [[0.0, 0.0]]  # no variance, no signal


def test_policy_gradient_loss_by_hand():
    s1 = Sequence(tokens=[0, 1, 2, 3], weights=[0.0, 1.0, 1.0])
    s2 = Sequence(tokens=[0, 1, 2], weights=[0.0, 1.0])
    lp1 = torch.tensor([-5.0, -1.0, -2.0], requires_grad=True)
    lp2 = torch.tensor([-3.0, -0.5], requires_grad=True)
    ref = [torch.tensor([-5.0, -1.5, -2.0]), torch.tensor([-3.0, -0.5])]
    loss, m = policy_gradient_loss([s1, s2], [lp1, lp2], [0.5, -0.5], ref, kl_coef=0.1, norm=4.0)
    # pg = -(0.5 * (-1 - 2)) - (-0.5 * -0.5) = 1.25; penalty = 0.5 * 0.5^2 = 0.125; (1.25 + 0.0125) / 4
    assert float(loss.detach()) == pytest.approx(0.315625)
    assert m["pg_loss"] == pytest.approx(1.25 / 4) and m["kl_penalty"] == pytest.approx(0.125 / 4)
    assert m["log_ratio_sum"] == pytest.approx(0.5) and m["tokens"] == 3.0
    loss.backward()
    # d/d lp1[1] = (-0.5 + 0.1 * 0.5) / 4; unweighted positions get nothing; d/d lp2[1] = 0.5 / 4
    assert lp1.grad.tolist() == pytest.approx([0.0, -0.1125, -0.125])
    assert lp2.grad.tolist() == pytest.approx([0.0, 0.125])


def test_micro_batches_add_up_to_the_step():
    seqs = [Sequence([0, 1, 2], [1.0, 1.0]) for _ in range(4)]
    lps = [torch.tensor([-1.0 - i, -0.5]) for i in range(4)]
    refs = [torch.tensor([-1.2, -0.5]) for _ in range(4)]
    advs = [0.3, -0.1, 0.2, -0.4]
    whole, _ = policy_gradient_loss(seqs, lps, advs, refs, 0.2, norm=8.0)
    parts = [policy_gradient_loss(seqs[i:i + 2], lps[i:i + 2], advs[i:i + 2], refs[i:i + 2], 0.2, norm=8.0)[0]
             for i in (0, 2)]
    assert float(whole) == pytest.approx(float(sum(parts)))


def test_win_rates_both_orders_by_hand():
    assert matchups(3) == [(0, 1), (0, 2), (1, 2)]
    # 0 beats 1 and 2 in both orders; 1 vs 2: the judge says "A" whatever it sees, so that game is a tie.
    assert [verdict_share("A", "B"), verdict_share("A", "A"), verdict_share("B", "A")] == [1.0, 0.5, 0.0]
    assert win_rates(3, [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.5)]) == [1.0, 0.25, 0.25]
    # An unparsed order splits its half: i gets 0.25 of the game, j 0.25 + 0.5 (it won the other order).
    assert verdict_share(None, "A") == 0.25
    assert win_rates(2, [(0, 1, 0.25)]) == [0.25, 0.75]


def test_margin_share_cancels_position_bias():
    # Log-odds of "A": +5 with i first, +3 with j first: a strong lean to A, and i preferred by 2 nats.
    assert margin_share(5.0, 3.0) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert margin_share(4.0, 4.0) == 0.5 and margin_share(-1.0, 1.0) == pytest.approx(1 / (1 + math.e))


def test_length_watch_warns_on_collapse(caplog):
    watch = LengthWatch(threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="character.train.rlaif"):
        assert watch.update(100.0) == 1.0 and watch.update(60.0) == pytest.approx(0.6)
        assert not caplog.records
        assert watch.update(40.0) == pytest.approx(0.4)
    assert watch.warnings == 1 and "collapsed" in caplog.records[0].getMessage()


# ---- judge rewards on fake judges ----------------------------------------------------------------------
REPLIES = re.compile(r"Reply A: (.*?)\n\nReply B: (.*?)\n\nWhich", re.DOTALL)


def preferred(question: str) -> str:
    """The fake judge's taste: the reply saying "kind" wins; otherwise it answers "A" (position bias)."""
    a, b = REPLIES.search(question).groups()
    return "B" if "kind" in b and "kind" not in a else "A"


class FakeGenerateJudge:
    name = "fake"

    def sample(self, conversations, params, n=1, adapter=None):
        return [[Completion(f"<answer>{preferred(c[-1]['content'])}</answer>", 10, 3, "stop")] for c in conversations]


class FakeLogprobJudge:
    """Scores `<answer>X</answer>` replies: log p = 0 for the preferred letter, -1 for the other."""
    name = "fake"

    def __init__(self):
        self.conversations = []

    def render(self, conversation, train_on="last"):
        self.conversations.append(conversation)
        return Sequence(tokens=[len(self.conversations) - 1, 0], weights=[1.0])

    def logprobs(self, sequences, adapter=None):
        out = []
        for s in sequences:
            conv = self.conversations[s.tokens[0]]
            letter = conv[-1]["content"][len("<answer>")]
            out.append(torch.tensor([0.0 if letter == preferred(conv[0]["content"]) else -1.0]))
        return out


@pytest.mark.parametrize("mode,judge", [("generate", FakeGenerateJudge()), ("logprob", FakeLogprobJudge())])
def test_judge_reward_win_rates_with_both_orders(mode, judge):
    rl = RlaifParams(judge_mode=mode)
    reward = JudgeReward(PairJudge(judge, "1. I am kind.", rl.judge_mode, rl.judge_sampling))
    groups = [["I am kind", "whatever", "meh"], ["no", "kind words"]]
    rewards, m = reward(["Hi", "Hello"], groups, seed=0)
    if mode == "generate":
        assert rewards == [[1.0, 0.25, 0.25], [0.0, 1.0]]
    else:  # log-odds +1 / -1 in the two orders: a share of sigmoid(1) for the kind reply; the rest ties
        win = 1 / (1 + math.exp(-1.0))
        assert rewards[0] == pytest.approx([win, (1 - win + 0.5) / 2, (1 - win + 0.5) / 2])
        assert rewards[1] == pytest.approx([1 - win, win])
    assert m["judge_consistency"] == pytest.approx(3 / 4)  # only the tie between "whatever" and "meh" disagrees
    assert m["judge_parse_rate"] == 1.0


# ---- sequences ------------------------------------------------------------------------------------------
def test_on_policy_sequence_weights_only_sampled_tokens(tiny_backend):
    from character.eval.benchmarks import end_of_turn_tokens
    tail = end_of_turn_tokens(tiny_backend)
    im_end = tiny_backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tail[0] == im_end and len(tail) >= 2  # <|im_end|> then a newline
    conv = [{"role": "user", "content": "Hi"}]
    full = tiny_backend.render(conv + [{"role": "assistant", "content": "Hello there"}])
    targets = lambda s: [s.tokens[i + 1] for i, w in enumerate(s.weights) if w]  # noqa: E731
    stopped = on_policy_sequence(tiny_backend, conv, Completion("Hello there", 5, 3, "stop"), tail)
    cut = on_policy_sequence(tiny_backend, conv, Completion("Hello there", 5, 3, "length"), tail)
    assert targets(stopped) == targets(full)[:-(len(tail) - 1)] and targets(stopped)[-1] == im_end
    assert targets(cut) == targets(full)[:-len(tail)] and im_end not in targets(cut)


# ---- the reward model -----------------------------------------------------------------------------------
def toy_pairs(n: int, seed: int) -> list[dict]:
    """Trivially separable: the chosen answer ends with "please", the rejected one with "never"."""
    rng = random.Random(seed)
    words = "apple river stone cloud tree lamp chair music paper window".split()
    rows = []
    for i in range(n):
        body = " ".join(rng.sample(words, 4))
        rows.append({"prompt": [{"role": "user", "content": f"Tell me about the {rng.choice(words)}, {i}."}],
                     "chosen": [{"role": "assistant", "content": f"{body} please"}],
                     "rejected": [{"role": "assistant", "content": f"{body} never"}]})
    return rows


@pytest.fixture()
def tiny_reward_base(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    folder = tmp_path / "base"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_reward_model_learns_toy_preference_and_reloads(tiny_reward_base, tmp_path):
    model, tokenizer = load_base(tiny_reward_base, torch.device("cpu"), seed=0)
    params = RewardModelParams(helpfulness_ratio=0.25, heldout_fraction=0.25, top_layers=1,
                               lora=LoraParams(rank=8, alpha=16),
                               optim=OptimParams(lr=5e-3, batch_size=8, micro_batch_size=8, epochs=3, warmup_ratio=0))
    steps = []
    out = tmp_path / "rm"
    m = run_reward_model(model, tokenizer, toy_pairs(40, 0), toy_pairs(12, 1), params, 0, out, "tiny",
                         on_step=lambda step, x: steps.append(x))
    assert m["character"]["heldout"] == 10 and m["helpfulness"]["heldout"] == 3
    assert m["character"]["train"] == 30 and m["helpfulness"]["train"] == 8 and m["train_pairs"] == 38
    assert m["character"]["heldout_accuracy"] >= 0.9 and m["helpfulness"]["heldout_accuracy"] >= 0.6
    assert m["character"]["length_baseline_accuracy"] == 0.5  # "please" and "never" are one token each
    assert steps and {"loss", "accuracy", "lr"} <= set(steps[0])
    # The saved LoRA + score head, folded into a fresh base, scores exactly as the trained model did.
    reloaded = RewardScorer.load(out, tiny_reward_base, torch.device("cpu"))
    trained = RewardScorer(model, tokenizer)
    conv = toy_pairs(1, 5)[0]
    convs = [conv["prompt"] + conv["chosen"], conv["prompt"] + conv["rejected"]]
    assert reloaded.score(convs) == pytest.approx(trained.score(convs), abs=1e-4)
    assert reloaded.score(convs)[0] > reloaded.score(convs)[1]


def test_hh_rlhf_and_trl_rows_become_pairs():
    hh = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris.",
          "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: No idea."}
    pair = to_pair(hh)
    assert [m["role"] for m in pair["prompt"]] == ["user", "assistant", "user"]
    assert pair["chosen"] == [{"role": "assistant", "content": "Paris."}]
    assert parse_hh(hh["rejected"])[-1] == {"role": "assistant", "content": "No idea."}
    assert to_pair({"prompt": "Q?", "chosen": "A.", "rejected": "B."})["prompt"] == [{"role": "user", "content": "Q?"}]
    assert to_pair({"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}) is None
    assert to_pair({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}) is None


def test_shipped_helpfulness_pairs_are_valid():
    from pathlib import Path
    rows = [json.loads(line) for line in
            (Path(__file__).resolve().parents[2] / "data/shipped/helpfulness_pairs.jsonl").read_text().splitlines()]
    assert len(rows) >= 60 and len({r["id"] for r in rows}) == len(rows)
    assert all(to_pair(r) is not None for r in rows)
    # Length is no shortcut: the rejected answer is at least as long as the chosen one in a good share of pairs.
    longer_rejected = sum(len(r["rejected"][0]["content"]) >= len(r["chosen"][0]["content"]) for r in rows)
    assert 0.3 <= longer_rejected / len(rows) <= 0.7


# ---- a tiny RL run --------------------------------------------------------------------------------------
def test_rlaif_runs_on_top_of_dpo_and_writes_everything(tiny_backend, tmp_path):
    from character.params import LoraParams, OptimParams
    dpo = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-3)).save(tmp_path / "dpo")
    params = RlaifParams(steps=2, prompts_per_step=2, group_size=2, max_new_tokens=6, lr=1e-2, eval_prompts=1,
                         eval_every=1, judge_mode="generate", lora=LoraParams(rank=4, alpha=8), micro_batch_size=3)
    reward = lambda messages, groups, seed: ([[float(len(a)) for a in g] for g in groups], {})  # noqa: E731
    steps = []
    judge = PairJudge(FakeGenerateJudge(), "1. I am kind.", params.judge_mode, params.judge_sampling)
    ref, m = run_rlaif(tiny_backend, reward, judge, ["Hi", "Tell me a joke", "Why?"],
                       ["Hello"], dpo, params, 0, str(tmp_path / "rl"), on_step=lambda s, x: steps.append(x))
    saved = json.loads((tmp_path / "rl" / "ref.json").read_text())
    assert saved["base_adapters"] == [dpo.path] and ref.step == 2
    assert len(steps) == 2 and {"reward", "kl", "length", "length_ratio", "win_rate_vs_start"} <= set(steps[1])
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the fresh LoRA starts as the DPO policy
    assert m["steps"] == 2 and m["prompts_train"] == 3 and 0.0 <= m["win_rate_vs_start"] <= 1.0
    samples = [json.loads(x) for x in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 1} and len(samples) == 8

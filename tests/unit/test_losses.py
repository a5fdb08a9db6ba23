import math

import torch

from character.backends.base import Sequence
from character.train.losses import character_dpo_loss, dpo_loss, sft_loss
from character.train.loop import lr_at, make_batches, split_heldout


def test_dpo_loss_hand_computed():
    loss, rc, rr = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                            torch.tensor([-11.0]), beta=0.1)
    # margin = 0.1 * (1 - (-1)) = 0.2; loss = -log sigmoid(0.2)
    assert math.isclose(float(loss), -math.log(1 / (1 + math.exp(-0.2))), rel_tol=1e-6)
    assert math.isclose(float(rc), 0.1, rel_tol=1e-6) and math.isclose(float(rr), -0.1, rel_tol=1e-6)


def test_character_dpo_loss_terms():
    # one pair; chosen has 2 response tokens, rejected has 1 (weights mask the prompt token)
    chosen = Sequence(tokens=[1, 2, 3, 4], weights=[0.0, 1.0, 1.0])
    rejected = Sequence(tokens=[1, 2, 5], weights=[0.0, 1.0])
    pol = [torch.tensor([-9.0, -1.0, -2.0]), torch.tensor([-9.0, -3.0])]
    ref = [torch.tensor([-9.0, -1.5, -2.5]), torch.tensor([-9.0, -2.0])]
    loss, m = character_dpo_loss([chosen, rejected], pol, ref, beta=0.1, nll_coef=0.1, kl_coef=0.001)
    margin = 0.1 * ((-3.0) - (-4.0)) - 0.1 * ((-3.0) - (-2.0))  # 0.1 - (-0.1) = 0.2
    dpo = -math.log(1 / (1 + math.exp(-margin)))
    nll = 3.0 / 2  # chosen: -(-1 - 2) / 2 tokens
    sq = ((0.25 + 0.25) / 2 + 1.0 / 1) / 2  # per-token mean per sequence, then mean over sequences
    assert math.isclose(float(loss), dpo + 0.1 * nll + 0.001 * sq, rel_tol=1e-6)
    assert m["accuracy"] == 1.0 and math.isclose(m["reward_margin"], margin, rel_tol=1e-6)


def test_sft_loss_counts_weighted_tokens_only():
    seqs = [Sequence([1, 2, 3], [0.0, 1.0]), Sequence([1, 2, 3, 4], [0.0, 1.0, 1.0])]
    loss, m = sft_loss(seqs, [torch.tensor([-100.0, -1.0]), torch.tensor([-100.0, -2.0, -3.0])])
    assert math.isclose(float(loss), 2.0) and m["tokens"] == 3


def test_lr_schedule_warmup_then_cosine_to_floor():
    lrs = [lr_at(s, 100, 1.0, 0.1, 0.1) for s in range(100)]
    assert math.isclose(lrs[0], 0.1) and math.isclose(lrs[9], 1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert math.isclose(lr_at(100, 100, 1.0, 0.1, 0.1), 0.1, rel_tol=1e-6)


def test_batches_and_heldout_are_deterministic():
    items = list(range(10))
    assert make_batches(items, 4, 1.5, 3) == make_batches(items, 4, 1.5, 3)
    assert sum(len(b) for b in make_batches(items, 4, 1.5, 3)) == 15
    train, held = split_heldout(items, 0.2, 0)
    assert len(held) == 2 and sorted(train + held) == items and not set(train) & set(held)

"""Loss functions on per-token log-probs, shared by every backend (Tinker's forward_backward_custom shape).

Each takes the batch's Sequences and their per-token log-probs (one 1-D tensor per sequence, aligned with
Sequence.weights) and returns (scalar loss, metrics). Pure maths, tested on hand-computed numbers.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from character.backends.base import Sequence, weighted_sum


def sft_loss(sequences: list[Sequence], logprobs: list[torch.Tensor], scale: float = 1.0):
    """Mean NLL per weighted token over the batch (assistant tokens only)."""
    total = cast(torch.Tensor, sum(weighted_sum(s, lp) for s, lp in zip(sequences, logprobs)))  # non-empty batch
    count = sum(sum(s.weights) for s in sequences)
    nll = -total / max(count, 1.0)
    return nll * scale, {"nll": float(nll.detach()), "tokens": float(count)}


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO on summed response log-probs (Rafailov et al., 2023). Inputs shape (P,).

    Returns (per-pair loss, chosen reward, rejected reward), rewards being beta * log-ratio.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def character_dpo_loss(sequences: list[Sequence], logprobs: list[torch.Tensor], ref_logprobs: list[torch.Tensor],
                       beta: float, nll_coef: float, kl_coef: float, scale: float = 1.0):
    """The paper's DPO objective on a batch laid out [chosen_0, rejected_0, chosen_1, rejected_1, ...].

    loss = DPO(summed log-probs) + nll_coef * per-token NLL of chosen
           + kl_coef * per-token mean of (log pi - log pi_ref)^2 over both responses.
    ref_logprobs are the frozen reference model's per-token log-probs, computed once before training.
    """
    if len(sequences) % 2:
        raise ValueError("DPO batches hold (chosen, rejected) pairs: an even number of sequences")
    sums, counts, sq = [], [], []
    for seq, lp, ref in zip(sequences, logprobs, ref_logprobs):
        w = torch.tensor(seq.weights, dtype=lp.dtype, device=lp.device)
        sums.append(((lp * w).sum(), (ref.to(lp.device) * w).sum()))
        counts.append(w.sum().clamp(min=1.0))
        sq.append(((lp - ref.to(lp.device)) ** 2 * w).sum() / counts[-1])
    pol = torch.stack([s[0] for s in sums])
    ref = torch.stack([s[1] for s in sums])
    losses, r_c, r_r = dpo_loss(pol[0::2], pol[1::2], ref[0::2], ref[1::2], beta)
    nll = -(pol[0::2] / torch.stack(counts[0::2])).mean()
    kl = torch.stack(sq).mean()
    loss = losses.mean() + nll_coef * nll + kl_coef * kl
    loss_value = loss.detach()
    metrics = {
        "loss": float(loss_value), "dpo_loss": float(losses.detach().mean()), "nll": float(nll.detach()),
        "sq_log_ratio": float(kl.detach()),
        "reward_chosen": float(r_c.detach().mean()), "reward_rejected": float(r_r.detach().mean()),
        "reward_margin": float((r_c - r_r).detach().mean()), "accuracy": float((r_c > r_r).float().mean()),
    }
    return loss * scale, metrics

"""The `dpo` stage: LoRA DPO on the character pairs with the paper's loss (character.train.losses).

The reference is the frozen base model; its per-token log-probs are computed once before training.
A held-out slice of pairs gives preference accuracy and reward margin before and after training.
"""

from __future__ import annotations

import logging
from functools import partial

import torch

from character.backends.base import Backend, CustomLoss, Sequence
from character.errors import DataError
from character.params import DpoParams
from character.train.loop import split_heldout, train
from character.train.losses import character_dpo_loss

log = logging.getLogger(__name__)


def tokenize_pairs(backend: Backend, rows: list[dict], max_length: int) -> tuple[list[tuple[Sequence, Sequence]], int]:
    """(chosen, rejected) Sequences for each pair; pairs longer than max_length are dropped and counted."""
    pairs, dropped = [], 0
    for row in rows:
        chosen = backend.render(row["prompt"] + row["chosen"])
        rejected = backend.render(row["prompt"] + row["rejected"])
        if max(len(chosen.tokens), len(rejected.tokens)) > max_length:
            dropped += 1
            continue
        pairs.append((chosen, rejected))
    return pairs, dropped


def preference_metrics(policy: list[torch.Tensor], ref: list[torch.Tensor], pairs, beta: float) -> dict[str, float]:
    """Held-out accuracy (chosen reward > rejected reward) and mean margin, rewards = beta * log-ratio."""
    margins = []
    for i, (c, r) in enumerate(pairs):
        wc, wr = torch.tensor(c.weights), torch.tensor(r.weights)
        reward_c = beta * ((policy[2 * i] - ref[2 * i]) * wc).sum()
        reward_r = beta * ((policy[2 * i + 1] - ref[2 * i + 1]) * wr).sum()
        margins.append(float(reward_c - reward_r))
    n = max(len(margins), 1)
    return {"heldout_accuracy": sum(m > 0 for m in margins) / n, "heldout_margin": sum(margins) / n}


def flat(pairs) -> list[Sequence]:
    return [s for pair in pairs for s in pair]


def run_dpo(backend: Backend, rows: list[dict], params: DpoParams, seed: int, out_dir: str, on_step=lambda s, m: None,
            checkpoints=None):
    """Train a DPO adapter; returns (AdapterRef, metrics)."""
    pairs, too_long = tokenize_pairs(backend, rows, params.max_length)
    if len(pairs) < 2:
        raise DataError(f"dpo: only {len(pairs)} usable pairs (of {len(rows)}); the pairs stage kept too few")
    train_pairs, heldout = split_heldout(pairs, params.heldout_fraction, seed)
    # Reference log-probs once, for every sequence, before any update (the base model, no adapter).
    index = {id(s): i for i, s in enumerate(flat(pairs))}
    ref = backend.logprobs(flat(pairs))
    log.info("dpo: %d train pairs, %d held out, %d dropped as longer than %d tokens",
             len(train_pairs), len(heldout), too_long, params.max_length)

    session = backend.train(params.lora, params.optim, seed=seed)

    def build(micro, share):
        seqs = flat(micro)
        loss = partial(character_dpo_loss, ref_logprobs=[ref[index[id(s)]] for s in seqs], beta=params.beta,
                       nll_coef=params.nll_coef, kl_coef=params.kl_coef, scale=share)
        return seqs, CustomLoss(loss)

    heldout_ref = [ref[index[id(s)]] for s in flat(heldout)]

    def evaluate():
        if not heldout:
            return {}
        return preference_metrics(session.logprobs(flat(heldout)), heldout_ref, heldout, params.beta)

    last = train(session, train_pairs, build, params.optim, seed, on_step=on_step, evaluate=evaluate,
                 eval_every=max(1, len(train_pairs) // params.optim.batch_size // 4), desc="dpo",
                 checkpoints=checkpoints)
    ref_out = session.save(out_dir)
    metrics = {"pairs_train": len(train_pairs), "pairs_heldout": len(heldout), "dropped_too_long": too_long,
               "steps": ref_out.step, "final_loss": last.get("loss"), "train_accuracy": last.get("accuracy"),
               "heldout_accuracy": last.get("heldout_accuracy"), "heldout_margin": last.get("heldout_margin")}
    return ref_out, metrics

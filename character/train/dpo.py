"""The `dpo` stage: LoRA DPO on the character pairs with the paper's loss (character.train.losses).

The reference is the frozen base model: the training session's own log-probs before its first step
(LoRA B starts at zero), computed once.
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


class TokenizedPair(tuple):
    """(chosen, rejected) Sequences, with the user prompt they answer (the held-out split groups by it)."""
    prompt: str

    def __new__(cls, chosen: Sequence, rejected: Sequence, prompt: str):
        pair = super().__new__(cls, (chosen, rejected))
        pair.prompt = prompt
        return pair


def tokenize_pairs(backend: Backend, rows: list[dict], max_length: int) -> tuple[list[TokenizedPair], int]:
    """(chosen, rejected) Sequences for each pair; pairs longer than max_length are dropped and counted."""
    pairs: list[TokenizedPair] = []
    dropped = 0
    for row in rows:
        chosen = backend.render(row["prompt"] + row["chosen"])
        rejected = backend.render(row["prompt"] + row["rejected"])
        if max(len(chosen.tokens), len(rejected.tokens)) > max_length:
            dropped += 1
            continue
        pairs.append(TokenizedPair(chosen, rejected, row["prompt"][-1]["content"]))
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
    # Held out by prompt: with K samples per prompt, no prompt is both trained on and held out.
    train_pairs, heldout = split_heldout(pairs, params.heldout_fraction, seed, groups=[p.prompt for p in pairs])
    log.info("dpo: %d train pairs, %d held out, %d dropped as longer than %d tokens",
             len(train_pairs), len(heldout), too_long, params.max_length)
    # The training session first: a rank the service refuses fails here, before any reference is paid for.
    session = backend.train(params.lora, params.optim, seed=seed)
    # Reference log-probs once, for every sequence, before any update: the fresh LoRA (B = 0) is the base
    # model, scored with the trainer's own numerics (a sampler's differ per token: tinker-cookbook#396).
    index = {id(s): i for i, s in enumerate(flat(pairs))}
    ref = session.logprobs(flat(pairs))

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

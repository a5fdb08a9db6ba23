"""The `sft` stage: SFT on the introspection transcripts, on top of the DPO model, without the constitution.

The DPO adapter is folded into the base weights and a new LoRA is trained on that. The loss covers
assistant turns only: every assistant message of a transcript, except those marked `"train": false` (a
canned greeting). Turns cut off by max tokens follow `sft.truncated`: "drop" makes them context only and
drops truncated self-reflections (counted), "trim" cuts them back to their last complete sentence.
Held-out NLL per assistant token is reported for the DPO model before SFT and for the result.
"""

from __future__ import annotations

import logging
from character.backends.base import AdapterRef, Backend, CrossEntropyLoss, Sequence, weighted_sum
from character.errors import DataError
from character.params import SftParams
from character.text import trim_to_sentence
from character.train.loop import split_heldout, train

log = logging.getLogger(__name__)


def settle_truncated(row: dict, policy: str) -> list[dict] | None:
    """The row's messages under the truncation policy; None drops the row."""
    messages: list[dict] = []
    for m in row["messages"]:
        cut = m.get("truncated") or (row.get("kind") == "reflection" and m["role"] == "assistant"
                                     and row.get("finish_reason") == "length")
        if cut and policy == "drop":
            if row.get("kind") == "reflection":
                return None
            m = {**m, "train": False}
        elif cut and policy == "trim":
            m = {**m, "content": trim_to_sentence(m["content"])}
            if not m["content"]:
                return None if row.get("kind") == "reflection" else [*messages]  # stop at an empty turn
        messages.append(m)
    return messages


def transcript_group(row: dict, index: int) -> str:
    """What the held-out split keeps together: a self-reflection prompt, or one conversation (saved from
    both instances' points of view, which share every turn); any other transcript on its own."""
    if row.get("kind") == "reflection" and "prompt_index" in row:
        return f"reflection-{row['prompt_index']}"
    if row.get("kind") == "interaction" and "conversation" in row:
        return f"interaction-{row['conversation']}"
    return f"row-{index}"


def tokenize_transcripts(backend: Backend, rows: list[dict], max_length: int, truncated: str = "drop",
                         groups: list[str] | None = None):
    """Sequences of the usable transcripts (and, if `groups` is given, each one's transcript_group appended
    to it), with drops counted by reason."""
    seqs, dropped = [], {"dropped_truncated_reflection": 0, "dropped_too_long": 0, "dropped_no_target": 0}
    for index, row in enumerate(rows):
        messages = settle_truncated(row, truncated)
        if messages is None:
            dropped["dropped_truncated_reflection"] += 1
            continue
        seq = backend.render(messages, train_on="all")
        if len(seq.tokens) > max_length:
            dropped["dropped_too_long"] += 1
        elif not any(seq.weights):
            dropped["dropped_no_target"] += 1
        else:
            seqs.append(seq)
            if groups is not None:
                groups.append(transcript_group(row, index))
    return seqs, dropped


def mean_nll(logprobs, seqs: list[Sequence]) -> float:
    total = sum(float(weighted_sum(s, lp)) for lp, s in zip(logprobs, seqs))
    return -total / max(sum(sum(s.weights) for s in seqs), 1.0)


def run_sft(backend: Backend, rows: list[dict], dpo: AdapterRef, params: SftParams, seed: int, out_dir: str,
            on_step=lambda s, m: None, checkpoints=None):
    groups: list[str] = []
    seqs, dropped = tokenize_transcripts(backend, rows, params.max_length, params.truncated, groups)
    if len(seqs) < 2:
        raise DataError(f"sft: only {len(seqs)} usable transcripts (of {len(rows)}): {dropped}")
    # Held out by reflection prompt and by conversation: a held-out transcript shares no prompt or turn
    # with a trained one.
    train_seqs, heldout = split_heldout(seqs, params.heldout_fraction, seed, groups=groups)
    nll_before = mean_nll(backend.logprobs(heldout, adapter=dpo), heldout) if heldout else None
    session = backend.train(params.lora, params.optim, base_adapters=[dpo], seed=seed)

    def build(micro, share):
        return micro, CrossEntropyLoss(scale=share)

    def evaluate():
        return {"heldout_nll": mean_nll(session.logprobs(heldout), heldout)} if heldout else {}

    last = train(session, train_seqs, build, params.optim, seed, on_step=on_step, evaluate=evaluate,
                 eval_every=max(1, len(train_seqs) // params.optim.batch_size // 4), desc="sft",
                 checkpoints=checkpoints)
    ref = session.save(out_dir)
    metrics = {"transcripts_train": len(train_seqs), "transcripts_heldout": len(heldout), **dropped,
               "train_tokens": int(sum(sum(s.weights) for s in train_seqs)), "steps": ref.step,
               "final_nll": last.get("nll"), "heldout_nll_before": nll_before, "heldout_nll_after": last.get("heldout_nll")}
    if not heldout:
        metrics["heldout_nll_null_reason"] = "no held-out transcripts (sft.heldout_fraction is 0, or too few rows)"
    return ref, metrics

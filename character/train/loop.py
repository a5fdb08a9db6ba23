"""The training loop SFT and DPO share: config in, flat loop, a metrics dict per step (after sl_loop).

We write the loop rather than wrapping TRL's DPOTrainer because the paper's objective (DPO on summed
log-probs + NLL + squared log-ratio) is not one of TRL's loss types, and because the same loop must
drive Tinker, whose training step is a remote `forward_backward_custom` call, not a torch module.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Callable, Iterable, Sequence as Seq, TypeVar

from tqdm import tqdm

from character.backends.base import Loss, ResumableSession, Sequence, TrainingSession
from character.params import OptimParams
from character.io import Checkpoints

log = logging.getLogger(__name__)
T = TypeVar("T")


def lr_at(step: int, total_steps: int, lr: float, warmup_ratio: float, min_lr_ratio: float) -> float:
    """Linear warmup, then cosine decay from lr to min_lr_ratio * lr (the paper's schedule)."""
    warmup = max(1, round(warmup_ratio * total_steps)) if warmup_ratio > 0 else 0
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_batches(items: Seq[T], batch_size: int, epochs: float, seed: int) -> list[list[T]]:
    """Shuffled batches over `epochs` passes (a fractional last pass is cut); the last short batch kept."""
    rng = random.Random(seed)
    order: list[T] = []
    full, frac = int(epochs), epochs - int(epochs)
    for _ in range(full):
        perm = list(items)
        rng.shuffle(perm)
        order += perm
    if frac:
        perm = list(items)
        rng.shuffle(perm)
        order += perm[: max(1, round(frac * len(perm)))]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def split_heldout(items: list[T], fraction: float, seed: int,
                  groups: list[str] | None = None) -> tuple[list[T], list[T]]:
    """(train, heldout); at least one heldout item when fraction > 0 and there are 2+ items.

    groups: a key per item (e.g. the prompt a pair answers); items that share one land on the same side,
    so with K samples per prompt no prompt is both trained on and held out. One item per group splits
    exactly as no groups does.
    """
    if groups is None:
        groups = [str(i) for i in range(len(items))]
    keys = list(dict.fromkeys(groups))
    if fraction <= 0 or len(keys) < 2:
        return list(items), []
    order = list(keys)
    random.Random(seed).shuffle(order)
    n = min(len(order) - 1, max(1, round(fraction * len(order))))
    held = set(order[:n])
    rank = {k: i for i, k in enumerate(order)}
    by_rank = sorted(range(len(items)), key=lambda i: rank[groups[i]])  # stable: a group keeps its order
    return ([items[i] for i in by_rank if groups[i] not in held], [items[i] for i in by_rank if groups[i] in held])


def fingerprint(batches: list[list]) -> str:
    """A content hash of a schedule of batches (their reprs, in order): what a resumed run must match."""
    import hashlib

    h = hashlib.sha256()
    for batch in batches:
        for item in batch:
            h.update(repr(item).encode())
        h.update(b"|")
    return h.hexdigest()


def mean_metrics(rows: Iterable[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Weighted mean of metric dicts; rows are (weight, metrics)."""
    total: dict[str, float] = {}
    weight = 0.0
    for w, m in rows:
        weight += w
        for k, v in m.items():
            total[k] = total.get(k, 0.0) + w * v
    return {k: v / weight for k, v in total.items()} if weight else {}


# A batch builder turns a list of examples into the sequences of one forward_backward call and the loss
# to apply to them, given the share of the optimizer step this micro-batch represents.
BatchBuilder = Callable[[list, float], tuple[list[Sequence], Loss]]


def train(session: TrainingSession, examples: list, build: BatchBuilder, optim: OptimParams, seed: int,
          on_step: Callable[[int, dict[str, float]], None] = lambda step, m: None,
          evaluate: Callable[[], dict[str, float]] | None = None, eval_every: int = 0,
          desc: str = "train", checkpoints: Checkpoints | None = None) -> dict[str, float]:
    """Run the optimizer over `examples`; returns the last step's metrics (plus evaluation, if any).

    With `checkpoints`, the session's state is saved every few steps and a re-run resumes from the last
    save: the batches are a function of the seed alone, so it trains on exactly the remaining ones. The
    metrics of the steps already taken are replayed through on_step, so curves come out whole.
    """
    batches = make_batches(examples, optim.batch_size, optim.epochs, seed)
    total = len(batches)
    log.info("%s: %d examples, %d steps of %d (micro-batches of %d)", desc, len(examples), total,
             optim.batch_size, optim.micro_batch_size)
    micro_size, done, history = optim.micro_batch_size, 0, []
    if isinstance(session, ResumableSession):  # Tinker: whole batches; the service keeps the saved states
        micro_size = max(len(b) for b in batches) if session.whole_batches and batches else micro_size
        done = session.resume(fingerprint(batches))
        checkpoints = None
    elif checkpoints:
        done, extra = checkpoints.restore(session)
        history = extra.get("history", [])
        for step, metrics in enumerate(history):
            on_step(step, metrics)
    last: dict[str, float] = history[-1] if history else {}
    for step, batch in enumerate(tqdm(batches[done:], desc=desc, unit="step", initial=done, total=total), start=done):
        rows = []
        for i in range(0, len(batch), micro_size):
            micro = batch[i:i + micro_size]
            sequences, loss = build(micro, len(micro) / len(batch))
            rows.append((len(micro), session.forward_backward(sequences, loss)))
        lr = lr_at(step, total, optim.lr, optim.warmup_ratio, optim.min_lr_ratio)
        last = {**mean_metrics(rows), **session.optim_step(lr), "lr": lr}
        if evaluate and eval_every and ((step + 1) % eval_every == 0 or step + 1 == total):
            last.update(evaluate())
        history.append(last)
        if checkpoints and checkpoints.due(step + 1, total):
            checkpoints.save(session, step + 1, {"history": history})
        on_step(step, last)
    return last

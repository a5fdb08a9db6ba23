"""RLAIF: policy-gradient RL from the DPO policy against a learned reward model or a prompted judge.

The paper left RL as future work. A replication (../shared/REFERENCE.md, RLAIF) trained a judge on the DPO
pairs and ran RL with groups of 4 and no KL: the win rate rose while answers collapsed from ~690 to ~150
tokens, the reward having learned style rather than character. This module makes those failures visible
and gives the obvious counters a place:
- rewards: `model`, the reward model of character.train.reward (trained with helpfulness pairs mixed in), or
  `judge`, a prompted judge with the constitution in context playing every pair of a group in both
  orders, the reward being the win rate within the group. Both orders cancel position bias: written
  verdicts that only follow position score ties; in logprob mode the judge's log-odds of "A" over "B"
  are differenced across the orders, so a constant lean towards "A" drops out (the 135M judge leans so
  hard that its hard verdicts were position-only, every game a tie, and RL got no signal);
- group-relative advantages, reward minus the group mean, optionally divided by the group's std;
- a KL penalty to the DPO policy, estimated from the per-token log-ratios of the sampled tokens;
- mean answer length logged every step, with a WARNING when it falls below `length_collapse` of the
  first step's; and the judge's win rate of the current policy against the starting one on held-out
  prompts, so a rising reward that the judge does not confirm shows up.

Sampling is on-policy from the adapter being trained at temperature 1 and top-p 1 (the policy itself),
so the importance ratio is 1 and the loss is the plain policy gradient, through the same
TrainingSession.forward_backward(sequences, loss_fn) as DPO and SFT. The loss is normalised by a constant
(answers x max_new_tokens) rather than by each answer's length: per-answer averaging gives short answers
larger per-token updates, a length bias of its own (Liu et al., 2025, "Understanding R1-Zero-Like
Training", Dr. GRPO).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from character.backends.base import (AdapterRef, Backend, Completion, Conversation, CustomLoss, SamplingParams, Sequence,
                                     end_of_turn_tokens)
from character.errors import DataError
from character.eval.judge import PairJudge
from character.io import write_jsonl
from character.params import OptimParams, RlaifParams
from character.io import Checkpoints

log = logging.getLogger(__name__)

Verdict = str | None  # "A", "B", or None (unparsed)


# ---- pure maths (tested on hand-computed numbers) ----------------------------------------------------
def matchups(group_size: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of a group: a round robin."""
    return [(i, j) for i in range(group_size) for j in range(i + 1, group_size)]


def win_rates(group_size: int, games: list[tuple[int, int, float]]) -> list[float]:
    """Each answer's mean share over its games; games: (i, j, i's share of the game)."""
    points, games_played = [0.0] * group_size, [0] * group_size
    for i, j, share in games:
        points[i] += share
        points[j] += 1.0 - share
        games_played[i] += 1
        games_played[j] += 1
    return [p / g if g else 0.5 for p, g in zip(points, games_played)]


def group_advantages(rewards_P_G: list[list[float]], scale_by_std: bool = False, eps: float = 1e-6) -> list[list[float]]:
    """Reward minus its group's mean; divided by the group's (population) std when scale_by_std."""
    out = []
    for group in rewards_P_G:
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out.append([(r - mean) / (std + eps) if scale_by_std else r - mean for r in group])
    return out


def policy_gradient_loss(sequences: list[Sequence], logprobs: list[torch.Tensor], advantages: list[float],
                         ref_logprobs: list[torch.Tensor], kl_coef: float, norm: float):
    """On-policy policy gradient with a KL penalty, over the weighted (sampled answer) tokens:

        loss = (1 / norm) * sum_i sum_t w_it * (-A_i * lp_it + kl_coef * 0.5 * (lp_it - ref_it)^2)

    The squared log-ratio's gradient, (lp - ref) * grad lp, is on on-policy samples the gradient of the
    per-token KL(pi || ref); the KL itself is reported as the mean log-ratio (an unbiased estimate).
    `norm` is the same for every micro-batch of a step, so micro-batch losses and metrics add up.
    """
    pg: torch.Tensor | float
    penalty: torch.Tensor | float
    pg, penalty, log_ratio, tokens = 0.0, 0.0, 0.0, 0.0
    for seq, lp, ref, adv in zip(sequences, logprobs, ref_logprobs, advantages):
        w = torch.tensor(seq.weights, dtype=lp.dtype, device=lp.device)
        diff = (lp - ref.to(lp.device)) * w
        pg = pg - adv * (lp * w).sum()
        penalty = penalty + 0.5 * (diff * (lp - ref.to(lp.device))).sum()
        log_ratio += float(diff.sum().detach())
        tokens += float(w.sum())
    loss = (pg + kl_coef * penalty) / norm
    return loss, {"loss": _value(loss), "pg_loss": _value(pg) / norm, "kl_penalty": _value(penalty) / norm,
                  "log_ratio_sum": log_ratio, "tokens": tokens}


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


@dataclass
class LengthWatch:
    """Mean answer length against the first step's; warns when it falls below `threshold` of it."""
    threshold: float
    first: float | None = None
    warnings: int = 0

    def update(self, mean_length: float) -> float:
        if self.first is None:
            self.first = mean_length
        ratio = mean_length / self.first if self.first else 1.0
        if ratio < self.threshold:
            self.warnings += 1
            log.warning("rlaif: answer length collapsed: mean %.1f tokens is %.0f%% of the first step's %.1f "
                        "(threshold %.0f%%); the reward probably favours short answers, not character",
                        mean_length, 100 * ratio, self.first, 100 * self.threshold)
        return ratio


# ---- rewards ------------------------------------------------------------------------------------------
class JudgeReward:
    """Win rate within the group: every pair judged in both orders by a judge with the constitution."""

    def __init__(self, judge: PairJudge):
        self.judge = judge

    def __call__(self, messages: list[str], answers_P_G: list[list[str]], seed: int):
        games = [(p, i, j) for p, group in enumerate(answers_P_G) for i, j in matchups(len(group))]
        shares, metrics = self.judge.games([(messages[p], answers_P_G[p][i], answers_P_G[p][j])
                                            for p, i, j in games], seed)
        by_group: list[list[tuple[int, int, float]]] = [[] for _ in answers_P_G]
        for (p, i, j), share in zip(games, shares):
            by_group[p].append((i, j, share))
        return [win_rates(len(group), g) for group, g in zip(answers_P_G, by_group)], metrics


class ModelReward:
    """The reward model's score of each answer in its conversation."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, messages: list[str], answers_P_G: list[list[str]], seed: int):
        convs = [[{"role": "user", "content": m}, {"role": "assistant", "content": a}]
                 for m, group in zip(messages, answers_P_G) for a in group]
        scores = iter(self.scorer.score(convs))
        return [[next(scores) for _ in group] for group in answers_P_G], {}


# ---- sequences ----------------------------------------------------------------------------------------
def on_policy_sequence(backend, conversation: Conversation, completion: Completion, tail: list[int]) -> Sequence:
    """The rendered conversation with loss weights on the sampled tokens only: the answer, plus the first
    end-of-turn token if the sampler stopped there; none of the template's tail after it (never sampled),
    and none of it for an answer cut off by max tokens (the policy did not choose to stop)."""
    seq = backend.render(conversation + [{"role": "assistant", "content": completion.text}])
    weighted = [i for i, w in enumerate(seq.weights) if w]
    ends = weighted[len(weighted) - len(tail):] if tail and len(weighted) >= len(tail) else []
    if [seq.tokens[i + 1] for i in ends] != tail:
        return seq  # the template does not end turns as expected: keep its weights
    keep = 1 if completion.finish_reason == "stop" else 0
    weights = list(seq.weights)
    for i in ends[keep:]:
        weights[i] = 0.0
    return Sequence(tokens=seq.tokens, weights=weights)


def user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


# ---- the loop -----------------------------------------------------------------------------------------
RewardFn = Callable[[list[str], list[list[str]], int], tuple[list[list[float]], dict[str, float]]]


def policy_sampling(params: RlaifParams, seed: int) -> SamplingParams:
    # Temperature 1, top-p 1, no repetition penalty: the samples come from the policy whose log-probs the
    # loss uses, so the on-policy importance ratio really is 1.
    return SamplingParams(temperature=1.0, top_p=1.0, max_tokens=params.max_new_tokens, repetition_penalty=1.0,
                          seed=seed)


def win_rate_vs_start(judge: PairJudge, messages: list[str], current: list[str], start: list[str],
                      seed: int) -> dict[str, float]:
    """The judge's win rate of the current policy's answers against the starting policy's, both orders."""
    shares, metrics = judge.games(list(zip(messages, current, start)), seed)
    return {"win_rate_vs_start": sum(shares) / len(shares), "eval_judge_consistency": metrics["judge_consistency"]}


def run_rlaif(backend: Backend, reward: RewardFn, judge: PairJudge, prompts: list[str], eval_prompts: list[str],
              dpo: AdapterRef, params: RlaifParams, seed: int, out_dir: str,
              on_step=lambda step, m: None, checkpoints: Checkpoints | None = None) -> tuple[AdapterRef, dict]:
    """Train a LoRA on top of the DPO policy by RL against `reward`; `judge` gives the win rate of the
    policy against its start on eval_prompts. Returns (AdapterRef, metrics). Writes samples.jsonl (first
    and last step's answers with their rewards) beside the adapter. With `checkpoints`, a re-run resumes
    from the last save: each step's sampling seed is a function of the step, so the rest is the same."""
    if not prompts:
        raise DataError("rlaif: no training-split prompts; the prompts stage kept none")
    optim = OptimParams(lr=params.lr, adam_betas=params.adam_betas, grad_clip=params.grad_clip, weight_decay=0.0)
    session = backend.train(params.lora, optim, base_adapters=[dpo], seed=seed)
    tail = end_of_turn_tokens(backend)
    order = list(prompts)
    random.Random(seed).shuffle(order)
    evaluate = bool(eval_prompts)
    start = [c.text for [c] in backend.sample([user(m) for m in eval_prompts], policy_sampling(params, seed),
                                              adapter=dpo)] if evaluate else []
    done, extra = checkpoints.restore(session) if checkpoints else (0, {})
    history, samples = extra.get("history", []), extra.get("samples", [])
    watch = LengthWatch(params.length_collapse, **extra.get("watch", {}))
    for step, metrics in enumerate(history):
        on_step(step, metrics)
    for step in range(done, params.steps):
        messages = [order[(step * params.prompts_per_step + k) % len(order)] for k in range(params.prompts_per_step)]
        convs = [user(m) for m in messages]
        step_seed = seed + 7919 * (step + 1)
        groups = session.sample(convs, policy_sampling(params, step_seed), n=params.group_size)
        rewards, reward_metrics = reward(messages, [[c.text for c in g] for g in groups], step_seed)
        advantages = [a for group in group_advantages(rewards, params.scale_by_std) for a in group]
        seqs = [on_policy_sequence(backend, conv, c, tail) for conv, g in zip(convs, groups) for c in g]
        ref = backend.logprobs(seqs, adapter=dpo)
        norm = len(seqs) * params.max_new_tokens
        parts = []
        for i in range(0, len(seqs), params.micro_batch_size):
            loss_fn = partial(policy_gradient_loss, advantages=advantages[i:i + params.micro_batch_size],
                              ref_logprobs=ref[i:i + params.micro_batch_size], kl_coef=params.kl_coef, norm=norm)
            parts.append(session.forward_backward(seqs[i:i + params.micro_batch_size], CustomLoss(loss_fn)))
        summed = {k: sum(p[k] for p in parts) for k in parts[0]}
        lengths = [c.completion_tokens for g in groups for c in g]
        flat_rewards = [r for g in rewards for r in g]
        metrics = {"loss": summed["loss"], "pg_loss": summed["pg_loss"], "kl_penalty": summed["kl_penalty"],
                   "kl": summed["log_ratio_sum"] / max(summed["tokens"], 1.0),  # per token, before this update
                   "reward": sum(flat_rewards) / len(flat_rewards),
                   "reward_std_in_group": sum(_std(g) for g in rewards) / len(rewards),
                   "length": sum(lengths) / len(lengths),
                   "truncated_rate": sum(c.finish_reason == "length" for g in groups for c in g) / len(lengths),
                   **reward_metrics, **session.optim_step(params.lr)}
        metrics["length_ratio"] = watch.update(metrics["length"])
        if evaluate and ((step + 1) % params.eval_every == 0 or step + 1 == params.steps):
            current = [c.text for [c] in session.sample([user(m) for m in eval_prompts], policy_sampling(params, seed))]
            metrics.update(win_rate_vs_start(judge, eval_prompts, current, start, seed))
        if step in (0, params.steps - 1):
            samples += [{"step": step, "prompt": m, "answer": c.text, "reward": r, "tokens": c.completion_tokens}
                        for m, g, rs in zip(messages, groups, rewards) for c, r in zip(g, rs)]
        log.info("rlaif step %d: reward %.3f, kl %.4f, length %.1f (%.0f%% of first)%s", step, metrics["reward"],
                 metrics["kl"], metrics["length"], 100 * metrics["length_ratio"],
                 f", win rate vs start {metrics['win_rate_vs_start']:.2f}" if "win_rate_vs_start" in metrics else "")
        history.append(metrics)
        if checkpoints and checkpoints.due(step + 1, params.steps):
            checkpoints.save(session, step + 1, {"history": history, "samples": samples,
                                                 "watch": {"first": watch.first, "warnings": watch.warnings}})
        on_step(step, metrics)
    ref_out = session.save(out_dir)
    write_jsonl(Path(out_dir) / "samples.jsonl", samples)
    return ref_out, summarize(history, watch, len(prompts), len(eval_prompts))


def _std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def summarize(history: list[dict], watch: LengthWatch, n_prompts: int, n_eval: int) -> dict:
    first, last = history[0], history[-1]
    evals = [h["win_rate_vs_start"] for h in history if "win_rate_vs_start" in h]
    # reward_std_in_group: the judge variant's mean reward is 0.5 by construction (games are zero-sum);
    # its signal is the spread within groups.
    keys = ("reward", "reward_std_in_group", "kl", "length", "truncated_rate", "judge_consistency")
    return {"steps": len(history), "prompts_train": n_prompts, "prompts_eval": n_eval,
            "first": {k: first[k] for k in keys if k in first}, "last": {k: last[k] for k in keys if k in last},
            "length_ratio": last["length_ratio"], "length_collapsed": last["length_ratio"] < watch.threshold,
            "length_collapse_warnings": watch.warnings,
            "win_rate_vs_start": evals[-1] if evals else None, "win_rate_vs_start_curve": evals}

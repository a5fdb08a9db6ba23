"""The judge's two jobs in the evaluation: name the trait a reply shows, and pick the more coherent reply.

The judge (role `judge`) never learns which model or method wrote a reply. `evaluation.judge_mode`:
- `generate` (the paper's protocol): the judge writes a verdict; it is read from `<answer>...</answer>`
  tags, or accepted when exactly one of the two options appears in it. Everything else counts as
  unparsed, and the parse rate is reported.
- `logprob`: the judge's log-likelihood of `<answer>option</answer>` as its reply, for each option; the
  likelier one is the verdict. Always parsed, and far more usable with a small judge such as the 135M
  default, which rarely follows the answer format (parse rates of 10-25% were seen). Needs a backend with
  log-probs (local, tinker; not an OpenAI-compatible server).
Coherence pairs are judged in both orders; only verdicts that agree across orders count (position bias
shows up as disagreement, not as a win).
"""

from __future__ import annotations

import math
import re
from typing import Literal, cast

from character import prompts as P
from character.backends.base import Backend, SamplingParams, weighted_sum
from character.io import Progress
from character.params import EvalParams, SamplingSection

ANSWER = re.compile(r"<answer>\s*(.*?)\s*(?:</answer>|$)", re.IGNORECASE | re.DOTALL)


def parse_choice(reply: str, options: list[str]) -> str | None:
    """The option the judge named, or None. Options are compared case-insensitively as whole words."""
    lowered = [o.lower() for o in options]
    m = ANSWER.search(reply)
    if m:
        inside = m.group(1).strip().strip(".\"'").lower()
        if inside in lowered:
            return options[lowered.index(inside)]
        reply = m.group(1)
    found = [o for o, low in zip(options, lowered) if re.search(rf"(?<![\w-]){re.escape(low)}(?![\w-])", reply.lower())]
    return found[0] if len(found) == 1 else None


def option_scores(judge: Backend, questions: list[str], options: list[list[str]]) -> list[list[float]]:
    """The judge's summed log-likelihood of replying `<answer>option</answer>`, per option of each question."""
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": P.ANSWER_TAG.format(option=o)}]
             for q, opts in zip(questions, options) for o in opts]
    seqs = [judge.render(c) for c in convs]
    totals = iter(float(weighted_sum(s, lp)) for s, lp in zip(seqs, judge.logprobs(seqs)))
    return [[next(totals) for _ in opts] for opts in options]


def decide(judge: Backend, questions: list[str], options: list[list[str]], mode: Literal["logprob", "generate"],
           sampling: SamplingSection, seed: int) -> list[tuple[str, str | None]]:
    """(verdict text, chosen option or None) for each judge question: a written verdict (`generate`, with
    these sampling settings) or the likelier option (`logprob`)."""
    if mode == "generate":
        outs = judge.sample([[{"role": "user", "content": q}] for q in questions], SamplingParams.of(sampling, seed))
        return [(c.text, parse_choice(c.text, opts)) for [c], opts in zip(outs, options)]
    out: list[tuple[str, str | None]] = []
    for opts, scores in zip(options, option_scores(judge, questions, options)):
        best = max(range(len(opts)), key=lambda i: scores[i])
        out.append((" ".join(f"{o}:{v:.3f}" for o, v in zip(opts, scores)), opts[best]))
    return out


def judge_traits(judge: Backend, rows: list[dict], ev: EvalParams, progress: Progress) -> list[dict]:
    """For revealed/expression answers: which of the two traits the reply shows (`winner`, or None)."""
    def produce(chunk, seed):
        questions = [P.REVEALED_JUDGE.format(message=r["prompt"], reply=r["answer"], first=r["traits"][0],
                                             second=r["traits"][1]) for r in chunk]
        verdicts = decide(judge, questions, [r["traits"] for r in chunk], ev.judge_mode, ev.judge_sampling, seed)
        return [{"id": r["id"], "method": r["method"], "persona": r.get("persona"), "verdict": text,
                 "winner": choice} for r, (text, choice) in zip(chunk, verdicts)]

    return progress.chunks(rows, ev.judge_sampling.batch_size, produce, "judge: traits", part="-t")


def judge_coherence(judge: Backend, pairs: list[dict], traits: dict[str, str], ev: EvalParams,
                    progress: Progress) -> list[dict]:
    """pairs: {persona, prompt, a_method, a, b_method, b}. Each judged as (a, b) and (b, a).

    Returns one row per pair with `winner` = a_method, b_method, or None (inconsistent or unparsed)."""
    def produce(chunk, seed):
        questions = [P.COHERENCE_JUDGE.format(traits=traits[p["persona"]], message=p["prompt"], first=first,
                                              second=second)
                     for p in chunk for first, second in ((p["a"], p["b"]), (p["b"], p["a"]))]
        verdicts = decide(judge, questions, [["A", "B"]] * len(questions), ev.judge_mode, ev.judge_sampling, seed)
        rows = []
        for i, p in enumerate(chunk):
            forward, backward = verdicts[2 * i][1], verdicts[2 * i + 1][1]
            first_pick = cast("dict[str | None, str]", {"A": p["a_method"], "B": p["b_method"]}).get(forward)
            second_pick = cast("dict[str | None, str]", {"A": p["b_method"], "B": p["a_method"]}).get(backward)
            rows.append({"persona": p["persona"], "a_method": p["a_method"], "b_method": p["b_method"],
                         "parsed": forward is not None and backward is not None,
                         "winner": first_pick if first_pick is not None and first_pick == second_pick else None})
        return rows

    size = max(1, ev.judge_sampling.batch_size // 2)
    return progress.chunks(pairs, size, produce, "judge: coherence", part="-c")


# ---- games between two replies, both orders (RLAIF's judge reward and its win rate vs the start) ------
def verdict_share(forward: str | None, backward: str | None) -> float:
    """Reply i's share of a game from two written verdicts: forward judged with i as reply A, backward with
    j as reply A. Each order is worth half to the reply it names; an unparsed order splits its half. A
    judge that always says "A" thus scores every game a tie."""
    share = 0.0
    for verdict, i_letter in ((forward, "A"), (backward, "B")):
        share += 0.5 if verdict == i_letter else 0.25 if verdict is None else 0.0
    return share


def margin_share(forward: float, backward: float) -> float:
    """Reply i's share of a game from the judge's log-odds of "A" over "B" in each order (logprob mode):
    sigmoid of half their difference. A constant preference for position A adds the same to both orders
    and cancels, so a position-biased judge still ranks replies by whatever preference it has left."""
    return 1.0 / (1.0 + math.exp(-(forward - backward) / 2))


class PairJudge:
    """The judge, with a persona's numbered trait list in context, playing games between two replies to one
    message in both orders. `games` returns reply i's share of each game and the judge's consistency: the
    share of games whose two orders name the same reply (~0 for a judge that only sees position).
    generate mode reads written verdicts (verdict_share); logprob mode differences log-odds (margin_share)."""

    def __init__(self, judge: Backend, traits: str, mode: Literal["logprob", "generate"], sampling: SamplingSection):
        self.judge, self.traits, self.mode, self.sampling = judge, traits, mode, sampling

    def games(self, games: list[tuple[str, str, str]], seed: int) -> tuple[list[float], dict[str, float]]:
        """games: (message, reply i, reply j)."""
        if not games:
            return [], {}
        questions = [P.RLAIF_JUDGE.format(traits=self.traits, message=m, first=a, second=b)
                     for m, i, j in games for a, b in ((i, j), (j, i))]
        if self.mode == "logprob":
            odds = [a - b for a, b in option_scores(self.judge, questions, [["A", "B"]] * len(questions))]
            pairs = list(zip(odds[0::2], odds[1::2]))
            shares = [margin_share(f, b) for f, b in pairs]
            agree = [(f > 0) != (b > 0) for f, b in pairs]  # "A" then "B": the same reply both times
            parse_rate = 1.0
        else:
            verdicts = [choice for _, choice in decide(self.judge, questions, [["A", "B"]] * len(questions),
                                                       "generate", self.sampling, seed)]
            vpairs = list(zip(verdicts[0::2], verdicts[1::2]))
            shares = [verdict_share(f, b) for f, b in vpairs]
            agree = [f is not None and b is not None and f != b for f, b in vpairs]
            parse_rate = sum(v is not None for v in verdicts) / len(verdicts)
        return shares, {"judge_consistency": sum(agree) / len(agree), "judge_parse_rate": parse_rate}

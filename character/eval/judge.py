"""The judge's two jobs in the evaluation: name the trait a reply shows, and pick the more coherent reply.

The judge (role `judge`) never learns which model or method wrote a reply. `evaluation.judge_mode`:
- `generate` (the paper's protocol): the judge writes a verdict; it is read from `<answer>...</answer>`
  tags, or accepted when exactly one of the two options appears in it. Everything else counts as
  unparsed, and the parse rate is reported.
- `logprob`: the judge's log-likelihood of `<answer>option</answer>` as its reply, for each option; the
  likelier one is the verdict. Always parsed, and far more usable with a small judge such as the 135M
  default, which rarely follows the answer format (parse rates of 10-25% were seen). Needs a backend with
  log-probs (local, tinker; not an OpenAI-compatible server).
In logprob mode trait verdicts are calibrated against the judge's verdict for an empty reply, and the
share of verdicts a reply changes is reported as the judge's sensitivity (judge_traits). Coherence
games, like RLAIF's, are judged in both orders (PairJudge): a constant lean towards the first-listed
reply cancels instead of counting as a win.
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


def trait_log_odds(judge: Backend, items: list[tuple[str, str, list[str]]]) -> list[float]:
    """For each (message, reply, traits): the judge's log-odds of traits[0] over traits[1], averaged over
    both orders of listing the two words (a preference for whichever is listed first cancels). One
    batched scoring call for all items."""
    questions, options = [], []
    for message, reply, (first, second) in items:
        for a, b in ((first, second), (second, first)):
            questions.append(P.REVEALED_JUDGE.format(message=message, reply=reply, first=a, second=b))
            options.append([first, second])
    scores = option_scores(judge, questions, options)
    return [((scores[2 * i][0] - scores[2 * i][1]) + (scores[2 * i + 1][0] - scores[2 * i + 1][1])) / 2
            for i in range(len(items))]


def judge_traits(judge: Backend, rows: list[dict], ev: EvalParams, progress: Progress) -> list[dict]:
    """For revealed/expression answers: which of the two traits the reply shows (`winner`, or None).

    logprob mode is calibrated: the verdict is the sign of the reply's log-odds (both orders) minus the
    log-odds the judge gives an EMPTY reply to the same message and traits, so the judge's prior over the
    words drops out. `changed` records whether the reply moved the verdict off the empty reply's: the
    share of rows where it did is the judge's sensitivity (a judge that ignores replies scores ~0).
    generate mode asks in both orders and keeps only verdicts that agree; `changed` compares the reply's
    verdict with the empty reply's in the same way.
    """
    empty: dict[tuple[str, str, str], object] = {}  # the empty reply's score, shared by every method

    def produce(chunk, seed):
        out = []
        if ev.judge_mode == "logprob":  # every score of the chunk in one batched call
            missing = list(dict.fromkeys((r["prompt"], *r["traits"]) for r in chunk
                                         if (r["prompt"], *r["traits"]) not in empty))
            scores = trait_log_odds(judge, [(r["prompt"], r["answer"], r["traits"]) for r in chunk]
                                    + [(m, "", [a, b]) for m, a, b in missing])
            empty.update(zip(missing, scores[len(chunk):]))
            replies = scores[:len(chunk)]
        for i, r in enumerate(chunk):
            key = (r["prompt"], *r["traits"])
            if ev.judge_mode == "logprob":
                raw, base = replies[i], cast(float, empty[key])
                score = raw - base
                winner = r["traits"][0] if score > 0 else r["traits"][1] if score < 0 else None
                out.append({"id": r["id"], "method": r["method"], "persona": r.get("persona"), "winner": winner,
                            "score": score, "raw": raw, "empty": base, "changed": (raw > 0) != (base > 0),
                            "verdict": f"{r['traits'][0]} over {r['traits'][1]}: {raw:.3f} - {base:.3f}"})
                continue
            if key not in empty:
                empty[key] = written_trait_verdict(judge, r["prompt"], "", r["traits"], ev, seed)
            (text, winner), base_winner = written_trait_verdict(judge, r["prompt"], r["answer"], r["traits"], ev,
                                                                seed), cast(tuple, empty[key])[1]
            out.append({"id": r["id"], "method": r["method"], "persona": r.get("persona"), "winner": winner,
                        "verdict": text, "empty_winner": base_winner, "changed": winner != base_winner})
        return out

    return progress.chunks(rows, ev.judge_sampling.batch_size, produce, "judge: traits", part="-t")


def written_trait_verdict(judge: Backend, message: str, reply: str, traits: list[str], ev: EvalParams,
                          seed: int) -> tuple[str, str | None]:
    """(verdict texts, the trait named in both orders, or None when the orders disagree or do not parse)."""
    first, second = traits
    questions = [P.REVEALED_JUDGE.format(message=message, reply=reply, first=a, second=b)
                 for a, b in ((first, second), (second, first))]
    verdicts = decide(judge, questions, [[first, second], [second, first]], "generate", ev.judge_sampling, seed)
    picks = [choice for _, choice in verdicts]
    return " | ".join(text for text, _ in verdicts), picks[0] if picks[0] is not None and picks[0] == picks[1] else None


def judge_coherence(judge: Backend, pairs: list[dict], traits: dict[str, str], ev: EvalParams,
                    progress: Progress) -> list[dict]:
    """pairs: {persona, prompt, a_method, a, b_method, b}, each a game judged in both orders by the rule
    RLAIF uses (PairJudge): `a_share` is reply a's share of the game (0.5: a tie, or a judge that only
    sees position)."""
    def produce(chunk, seed):
        rows = []
        for persona in sorted({p["persona"] for p in chunk}):
            mine = [p for p in chunk if p["persona"] == persona]
            referee = PairJudge(judge, traits[persona], ev.judge_mode, ev.judge_sampling, P.COHERENCE_JUDGE)
            shares, metrics = referee.games([(p["prompt"], p["a"], p["b"]) for p in mine], seed)
            rows += [{"persona": p["persona"], "prompt_id": p.get("prompt_id"), "a_method": p["a_method"],
                      "b_method": p["b_method"], "a_share": share, "parse_rate": metrics["judge_parse_rate"]}
                     for p, share in zip(mine, shares)]
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

    def __init__(self, judge: Backend, traits: str, mode: Literal["logprob", "generate"], sampling: SamplingSection,
                 template: str = P.RLAIF_JUDGE):
        self.judge, self.traits, self.mode, self.sampling, self.template = judge, traits, mode, sampling, template

    def games(self, games: list[tuple[str, str, str]], seed: int) -> tuple[list[float], dict[str, float]]:
        """games: (message, reply i, reply j)."""
        if not games:
            return [], {}
        questions = [self.template.format(traits=self.traits, message=m, first=a, second=b)
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

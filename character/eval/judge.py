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

import re

import torch

from character import prompts as P
from character.io import run_chunks
from character.params import EvalParams
from character.data.pairs import sampling

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


def option_scores(judge, questions: list[str], options: list[list[str]]) -> list[list[float]]:
    """The judge's summed log-likelihood of replying `<answer>option</answer>`, per option of each question."""
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": f"<answer>{o}</answer>"}]
             for q, opts in zip(questions, options) for o in opts]
    seqs = [judge.render(c) for c in convs]
    totals = iter(float((lp * torch.tensor(s.weights)).sum()) for s, lp in zip(seqs, judge.logprobs(seqs)))
    return [[next(totals) for _ in opts] for opts in options]


def decide(judge, questions: list[str], options: list[list[str]], ev: EvalParams, seed: int) -> list[tuple[str, str | None]]:
    """(verdict text, chosen option or None) for each judge question, in the configured judge mode."""
    if ev.judge_mode == "generate":
        outs = judge.sample([[{"role": "user", "content": q}] for q in questions], sampling(ev.judge_sampling, seed))
        return [(c.text, parse_choice(c.text, opts)) for [c], opts in zip(outs, options)]
    out = []
    for opts, scores in zip(options, option_scores(judge, questions, options)):
        best = max(range(len(opts)), key=lambda i: scores[i])
        out.append((" ".join(f"{o}:{v:.3f}" for o, v in zip(opts, scores)), opts[best]))
    return out


def judge_traits(judge, rows: list[dict], ev: EvalParams, progress_dir: str, key: str) -> list[dict]:
    """For revealed/expression answers: which of the two traits the reply shows (`winner`, or None)."""
    def produce(chunk, seed):
        questions = [P.REVEALED_JUDGE.format(message=r["prompt"], reply=r["answer"], first=r["traits"][0],
                                             second=r["traits"][1]) for r in chunk]
        verdicts = decide(judge, questions, [r["traits"] for r in chunk], ev, seed)
        return [{"id": r["id"], "method": r["method"], "persona": r.get("persona"), "verdict": text,
                 "winner": choice} for r, (text, choice) in zip(chunk, verdicts)]

    return run_chunks(rows, ev.judge_sampling.batch_size, produce, progress_dir, key, "judge: traits")


def judge_coherence(judge, pairs: list[dict], traits: dict[str, str], ev: EvalParams, progress_dir: str,
                    key: str) -> list[dict]:
    """pairs: {persona, prompt, a_method, a, b_method, b}. Each judged as (a, b) and (b, a).

    Returns one row per pair with `winner` = a_method, b_method, or None (inconsistent or unparsed)."""
    def produce(chunk, seed):
        questions = [P.COHERENCE_JUDGE.format(traits=traits[p["persona"]], message=p["prompt"], first=first,
                                              second=second)
                     for p in chunk for first, second in ((p["a"], p["b"]), (p["b"], p["a"]))]
        verdicts = decide(judge, questions, [["A", "B"]] * len(questions), ev, seed)
        rows = []
        for i, p in enumerate(chunk):
            forward, backward = verdicts[2 * i][1], verdicts[2 * i + 1][1]
            first_pick = {"A": p["a_method"], "B": p["b_method"]}.get(forward)
            second_pick = {"A": p["b_method"], "B": p["a_method"]}.get(backward)
            rows.append({"persona": p["persona"], "a_method": p["a_method"], "b_method": p["b_method"],
                         "parsed": forward is not None and backward is not None,
                         "winner": first_pick if first_pick is not None and first_pick == second_pick else None})
        return rows

    size = max(1, ev.judge_sampling.batch_size // 2)
    return run_chunks(pairs, size, produce, progress_dir, key, "judge: coherence")

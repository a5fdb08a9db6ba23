"""The `pairs` stage: chosen answers from the teacher with the constitution, rejected from the student without.

Output rows use the conversational preference format that TRL and `datasets.load_dataset("json")` read:
{"prompt": [user message], "chosen": [assistant message], "rejected": [assistant message], ...}.
Filters follow the paper: drop a pair if either answer is empty, truncated (cut by max tokens, or not
ending in punctuation), or if either templated conversation is longer than max_tokens. With
`truncated: trim`, a cut-off answer is trimmed back to its last complete sentence instead. Reasoning traces
are stripped and the teacher's name is replaced by the student's. Every drop is counted by reason.

The teacher's context is params.elicitation's (character.constitution.teacher_context): the full or short
constitution prompt, few-shot turns, and optionally classifier-free guidance against the bare prompt (the
rejected answer's context). Guided chosen answers pass a coherence guard (base-model NLL and distinct
bigrams against the unguided rejected answers); what it drops is counted as dropped_incoherent_chosen.
Neither guard score is an evaluation metric.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import statistics
from dataclasses import replace

from character.backends.base import Backend, Completion, SamplingParams, mean_logprobs
from character.constitution import TeacherContext
from character.errors import DataError
from character.io import Progress
from character.params import ElicitationParams, PairsParams
from character.text import distinct_bigrams, trim_to_sentence

THINK = re.compile(r"<think>.*?</think>|<reasoning>.*?</reasoning>", re.DOTALL | re.IGNORECASE)
ENDS_WELL = re.compile(r"[.!?)\]\"'`*:;…~>]\s*$|[\U0001F300-\U0001FAFF]\s*$")


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str

    def to_row(self) -> dict:
        return {"id": self.id, "source": self.source,
                "prompt": [{"role": "user", "content": self.prompt}],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def clean(text: str, teacher_name: str, student_name: str) -> str:
    text = THINK.sub("", text)
    if "</think>" in text:  # an unclosed-at-start trace: keep what follows it
        text = text.split("</think>", 1)[1]
    if teacher_name and teacher_name != student_name:
        text = re.sub(rf"\b{re.escape(teacher_name)}\b", student_name, text)
    return text.strip()


def settle(c: Completion, text: str, policy: str) -> tuple[str, str | None]:
    """(text to use, drop reason or None) for one answer under the truncation policy."""
    cut = c.finish_reason == "length" or not ENDS_WELL.search(text)
    if text and cut and policy == "trim":
        text = trim_to_sentence(text)
    if not text:
        return text, "empty"
    if cut and policy == "drop":
        return text, "truncated"
    return text, None


def answer_nll(backend: Backend, prompts: list[str], answers: list[str]) -> list[float]:
    """Per-token NLL of each answer after its bare prompt, under the backend's base model."""
    return [-x for x in mean_logprobs(backend, [[{"role": "user", "content": p}, {"role": "assistant", "content": a or "."}]
                                               for p, a in zip(prompts, answers)])]


def incoherent(student: Backend, rows: list[tuple[str, str, str]], elicitation: ElicitationParams) -> list[bool]:
    """The guard on guided chosen answers, one verdict per (prompt, chosen, rejected): NLL per token under the
    student's base model over guard_max_nll_ratio x the rejected answers' median, or distinct bigrams under
    guard_min_distinct x theirs (the same two checks as the steering calibration's)."""
    prompts = [p for p, _, _ in rows]
    nll_c = answer_nll(student, prompts, [c for _, c, _ in rows])
    nll_r = answer_nll(student, prompts, [r for _, _, r in rows])
    ceiling = elicitation.guard_max_nll_ratio * statistics.median(nll_r)
    floor = elicitation.guard_min_distinct * statistics.median(distinct_bigrams([r]) for _, _, r in rows)
    return [n > ceiling or distinct_bigrams([c]) < floor for n, (_, c, _) in zip(nll_c, rows)]


def build_pairs(prompts: list[dict], teacher: Backend, student: Backend, context: TeacherContext,
                names: tuple[str, str], params: PairsParams, elicitation: ElicitationParams,
                progress: Progress) -> tuple[list[dict], dict]:
    """Sample K chosen/rejected answers per training prompt and keep the pairs that pass the filters.

    names: (teacher's, student's) assistant names; the teacher's is replaced by the student's in chosen answers.
    """
    teacher_name, student_name = names
    k = params.samples_per_prompt
    guided = elicitation.guidance != 1.0

    def produce(chunk: list[dict], chunk_seed: int) -> list[dict]:
        bare = [[{"role": "user", "content": p["prompt"]}] for p in chunk]
        teacher_params = replace(SamplingParams.of(params.sampling, chunk_seed), guidance=elicitation.guidance)
        chosen = teacher.sample([context.before(c) for c in bare], teacher_params, n=k,
                                negatives=bare if guided else None)
        rejected = student.sample([[{"role": "user", "content": p["prompt"]}] for p in chunk],
                                  SamplingParams.of(params.sampling, chunk_seed + 1), n=k)
        rows = []
        for p, cs, rs in zip(chunk, chosen, rejected):
            for j, (c, r) in enumerate(zip(cs, rs)):
                rows.append({"id": f"{p['id']}-{j}", "prompt": p["prompt"], "source": p["source"],
                             "chosen": c.__dict__, "rejected": r.__dict__})
        return rows

    raw = progress.chunks(prompts, params.sampling.batch_size // k or 1, produce, "pairs")
    stats: Counter[str]
    kept, stats, settled = [], Counter(), []
    for row in raw:
        c, r = Completion(**row["chosen"]), Completion(**row["rejected"])
        raw_c, raw_r = clean(c.text, teacher_name, student_name), clean(r.text, student_name, student_name)
        chosen, why_c = settle(c, raw_c, params.truncated)
        rejected, why_r = settle(r, raw_r, params.truncated)
        reason = why_c or why_r
        if reason is None:
            longest = max(len(student.render([{"role": "user", "content": row["prompt"]},
                                              {"role": "assistant", "content": t}]).tokens) for t in (chosen, rejected))
            reason = "too_long" if longest > params.max_tokens else None
        if reason:
            side = "chosen" if (why_c or reason == "too_long") else "rejected"
            stats[f"dropped_{reason}_{side}" if reason != "too_long" else "dropped_too_long"] += 1
            continue
        stats["trimmed_answers"] += (chosen != raw_c) + (rejected != raw_r)
        settled.append(PreferencePair(row["id"], row["prompt"], chosen, rejected, row["source"]))
    verdicts = incoherent(student, [(p.prompt, p.chosen, p.rejected) for p in settled], elicitation) \
        if guided and settled else [False] * len(settled)
    stats["dropped_incoherent_chosen"] = sum(verdicts)
    kept = [p.to_row() for p, bad in zip(settled, verdicts) if not bad]
    if not kept:
        raise DataError(f"pairs: all {len(raw)} sampled pairs were dropped ({dict(stats)}); raise "
                         "pairs.sampling.max_new_tokens or set pairs.truncated: trim")
    n = len(kept)
    metrics = {
        "sampled": len(raw), "kept": len(kept), "kept_fraction": len(kept) / max(len(raw), 1), **dict(sorted(stats.items())),
        "chosen_words_mean": sum(len(p["chosen"][0]["content"].split()) for p in kept) / n,
        "rejected_words_mean": sum(len(p["rejected"][0]["content"].split()) for p in kept) / n,
    }
    return kept, metrics

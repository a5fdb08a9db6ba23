"""The `prompts` stage: general prompts and constitution-relevant prompts, split train / held-out.

General prompts come from the shipped offline set (data/shipped/general_prompts.jsonl), optionally
widened by a template synthesizer, or from a Hugging Face dataset when params name one and it is
reachable. Constitution-relevant prompts are each trait's seed questions, extended by the teacher to N
per trait; near-duplicates (word overlap > max_word_overlap) and malformed lines are rejected and counted.
The split hashes each prompt's text with the seed, so a prompt lands on the same side for every persona.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import random
import re
from collections import Counter
from pathlib import Path

from character import prompts as P
from character.backends.base import Backend, SamplingParams
from character.constitution import Constitution
from character.io import Progress, read_jsonl, shipped
from character.text import numbered, overlap, words
from character.params import PromptsParams

log = logging.getLogger(__name__)


def load_general(params: PromptsParams, seed: int) -> list[dict]:
    if params.general_source == "shipped":
        rows = [{"id": r["id"], "prompt": r["prompt"], "category": r["category"]} for r in read_jsonl(shipped("general_prompts.jsonl"))]
    else:
        import datasets  # only for users who have the hub

        data = datasets.load_dataset(params.general_source, split="train")
        if params.general_field not in data.column_names:
            raise ValueError(f"params.yaml: prompts.general_field {params.general_field!r} is not a column of "
                             f"{params.general_source} (columns: {data.column_names})")
        rows = [{"id": f"hf{i:06d}", "prompt": str(x), "category": "hf"}
                for i, x in enumerate(data[params.general_field]) if str(x).strip()]
    random.Random(seed).shuffle(rows)
    rows = rows[: params.general_count]
    return rows + synthesize(params.synthesized_count, seed)


def synthesize(count: int, seed: int) -> list[dict]:
    combos = list(itertools.product(P.SYNTH_OBJECTIVES, P.SYNTH_AUDIENCES, P.SYNTH_SCENARIOS, P.SYNTH_CONSTRAINTS))
    random.Random(seed).shuffle(combos)
    return [{"id": f"s{i:05d}", "category": "synthesized",
             "prompt": P.SYNTH_TEMPLATE.format(objective=o, audience=a, scenario=s, constraint=c).strip()}
            for i, (o, a, s, c) in enumerate(combos[:count])]


def parse_numbered(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*(\d+)[.)]\s+(.*\S)\s*$", line)
        if m:
            out.append(m.group(2).strip().strip('"').strip())
    return out


def malformed(q: str) -> str | None:
    if len(q.split()) < 3:
        return "too_short"
    if len(q.split()) > 80:
        return "too_long"
    if not re.search(r"[A-Za-z]", q) or q.lower().startswith(("here are", "sure", "note:")):
        return "not_a_message"
    return None


def extend_traits(backend, traits: list, n: int, params: PromptsParams, seed: int) -> tuple[list[list[str]], Counter]:
    """Per trait: seed + additional questions, then teacher-written ones until n are accepted.

    Each round sends one request per unfinished trait in a single batched call.
    """
    stats: Counter = Counter()
    accepted: list[list[str]] = []
    for trait in traits:
        kept: list[str] = []
        for q in [*trait.questions, *trait.additional_questions]:
            if all(overlap(words(q), words(a)) <= params.max_word_overlap for a in kept):
                kept.append(q)
        accepted.append(kept)
    s = params.sampling
    for round_ in range(params.generation_rounds):
        todo = [i for i in range(len(traits)) if len(accepted[i]) < n]
        if not todo:
            break
        requests = []
        for i in todo:
            shown = random.Random(seed + 7919 * round_ + i).sample(accepted[i], min(len(accepted[i]), 8))
            clar = f"\n({traits[i].clarification})" if traits[i].clarification else ""
            requests.append([{"role": "user", "content": P.QUESTION_GENERATION.format(
                trait=traits[i].assertion, clarification=clar,
                examples=numbered(shown),
                n=min(10, n - len(accepted[i]) + 2))}])
        completions = backend.sample(requests, SamplingParams.of(s, seed + round_))
        for i, [completion] in zip(todo, completions):
            for q in parse_numbered(completion.text):
                stats["generated"] += 1
                reason = malformed(q)
                if reason is None and any(overlap(words(q), words(a)) > params.max_word_overlap for a in accepted[i]):
                    reason = "near_duplicate"
                if reason:
                    stats[f"rejected_{reason}"] += 1
                elif len(accepted[i]) < n:
                    accepted[i].append(q)
    return [a[:n] for a in accepted], stats


def split_of(text: str, fraction: float, seed: int) -> str:
    h = int(hashlib.sha256(f"{seed}:{text.strip().lower()}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < fraction else "train"


def build_prompts(constitution: Constitution, teacher: Backend, params: PromptsParams, seed: int,
                  progress: Progress) -> tuple[list[dict], dict]:
    def produce(chunk: list[int], chunk_seed: int) -> list[dict]:
        questions, stats = extend_traits(teacher, [constitution.traits[i] for i in chunk],
                                         params.questions_per_trait, params, chunk_seed)
        rows = [{"prompt": q, "source": "constitution", "trait": i} for i, qs in zip(chunk, questions) for q in qs]
        return rows + [{"stats": dict(stats)}]  # kept with the chunk, so a resumed run counts it too

    out = progress.chunks(list(range(len(constitution.traits))), 8, produce, f"{constitution.name}: trait questions")
    stats = sum((Counter(r["stats"]) for r in out if "stats" in r), Counter())
    trait_rows = [r for r in out if "stats" not in r]
    general = [{"prompt": g["prompt"], "source": "general", "category": g["category"], "id": g["id"]}
               for g in load_general(params, seed)]
    rows = [{"id": f"{constitution.name}-t{r['trait']:02d}-{i:04d}", **r} for i, r in enumerate(trait_rows)]
    rows += general
    for r in rows:
        r["split"] = split_of(r["prompt"], params.heldout_fraction, seed)
    per_trait = Counter(r["trait"] for r in trait_rows)
    metrics = {
        "general": len(general), "constitution": len(trait_rows),
        "train": sum(r["split"] == "train" for r in rows), "heldout": sum(r["split"] == "heldout" for r in rows),
        "min_per_trait": min(per_trait.values()) if per_trait else 0, "target_per_trait": params.questions_per_trait,
        "teacher_generated": stats["generated"],
        **{k: v for k, v in sorted(stats.items()) if k.startswith("rejected_")},
    }
    return rows, metrics

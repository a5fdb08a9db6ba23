"""The `introspection` stage: the DPO model, with the constitution, writes about itself and talks to itself.

Self-reflection: each of the ten prompts in prompts.SELF_REFLECTION, N samples.
Self-interaction: M conversations of T generated turns between two instances of the persona. Half are
told they have complete freedom, half are invited to reflect; that guidance is really in their system
prompt (the official code never inserted it). Each instance sees its own turns as assistant and the
other's as user. Every generated turn is kept, and each conversation is saved from both instances'
points of view, so every turn is an assistant target once (the official code kept 9 of 10 turns and
trained on a user message). The canned greeting is marked `"train": false`.
Transcripts are saved WITHOUT the constitution system prompt: that is the prompt distillation.
The context is the teacher's (params.elicitation: full or short prompt, few-shot turns); guidance is not
applied here (it is a pairs-stage option: the transcripts are long, and the guard is built for answers).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from character import prompts as P
from character.backends.base import AdapterRef, Backend, SamplingParams
from character.constitution import TeacherContext
from character.io import Progress
from character.params import IntrospectionParams


def reflections(backend: Backend, adapter: AdapterRef, context: TeacherContext, params: IntrospectionParams,
                progress: Progress) -> list[dict]:
    items = [(i, j) for i, _ in enumerate(P.SELF_REFLECTION) for j in range(params.reflection_samples)]

    def produce(chunk, seed):
        convs = [context.before([{"role": "user", "content": P.SELF_REFLECTION[i]}]) for i, _ in chunk]
        outs = backend.sample(convs, SamplingParams.of(params.reflection_sampling, seed), adapter=adapter)
        return [{"kind": "reflection", "prompt_index": i, "finish_reason": c.finish_reason,
                 "messages": [{"role": "user", "content": P.SELF_REFLECTION[i]},
                              {"role": "assistant", "content": c.text}]}
                for (i, _), [c] in zip(chunk, outs)]

    return progress.chunks(items, params.reflection_sampling.batch_size, produce, "self-reflection", part="-r")


def view(turns: list[str], speaker: int, finish: Sequence[str] = ()) -> list[dict]:
    """The conversation as instance `speaker` (0 opened with the greeting, 1 answered) sees it.

    finish[t - 1] is turn t's finish reason; a turn cut off by max tokens is context, not a target.
    """
    msgs = []
    for t, text in enumerate(turns):
        msg: dict[str, str | bool] = {"role": "assistant" if t % 2 == speaker else "user", "content": text}
        if msg["role"] == "assistant" and t == 0:
            msg["train"] = False  # the canned greeting: not the model's words
        if t > 0 and len(finish) >= t and finish[t - 1] == "length":
            msg["truncated"] = True  # cut off by max tokens: SFT uses it as context only (see sft.truncated)
        msgs.append(msg)
    return msgs


def interactions(backend: Backend, adapter: AdapterRef, context: TeacherContext, params: IntrospectionParams,
                 progress: Progress) -> list[dict]:
    modes = ["freedom" if m % 2 == 0 else "reflect" for m in range(params.interactions)]

    def produce(chunk, chunk_seed):
        rng = random.Random(chunk_seed)
        guidance = {"freedom": P.INTERACTION_FREEDOM, "reflect": P.INTERACTION_REFLECT}
        turns = [[rng.choice(P.INTERACTION_GREETINGS)] for _ in chunk]
        finish: list[list[str]] = [[] for _ in chunk]
        for t in range(1, params.turns + 1):
            speaker = t % 2  # instance 1 answers the greeting, then they alternate
            convs = [context.before([{"role": m["role"], "content": m["content"]} for m in view(ts, speaker)],
                                    extra_system=guidance[mode])
                     for (_, mode), ts in zip(chunk, turns)]
            outs = backend.sample(convs, SamplingParams.of(params.interaction_sampling, chunk_seed + t), adapter=adapter)
            for ts, fs, [c] in zip(turns, finish, outs):
                ts.append(c.text)
                fs.append(c.finish_reason)
        rows = []
        for (index, mode), ts, fs in zip(chunk, turns, finish):
            for speaker in (0, 1):
                rows.append({"kind": "interaction", "mode": mode, "conversation": index, "speaker": speaker,
                             "truncated_turns": fs.count("length"), "messages": view(ts, speaker, fs)})
        return rows

    return progress.chunks(list(enumerate(modes)), params.interaction_sampling.batch_size, produce,
                           "self-interaction", part="-i")


def run_introspection(backend: Backend, adapter: AdapterRef, context: TeacherContext, params: IntrospectionParams,
                      progress: Progress) -> tuple[list[dict], dict]:
    rows = reflections(backend, adapter, context, params, progress)
    rows += interactions(backend, adapter, context, params, progress)
    refl = [r for r in rows if r["kind"] == "reflection"]
    inter = [r for r in rows if r["kind"] == "interaction"]
    words = [len(m["content"].split()) for r in rows for m in r["messages"] if m["role"] == "assistant"]
    metrics = {
        "reflections": len(refl), "interactions": len(inter) // 2, "transcripts": len(rows),
        "reflection_truncated_fraction": sum(r["finish_reason"] == "length" for r in refl) / max(len(refl), 1),
        "interaction_turns_truncated": sum(r["truncated_turns"] for r in inter) // 2,
        "assistant_words_mean": sum(words) / max(len(words), 1),
        "empty_turns": sum(1 for r in rows for m in r["messages"] if not m["content"].strip()),
    }
    return rows, metrics

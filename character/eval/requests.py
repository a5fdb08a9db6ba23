"""The evaluation suite's generation side: which methods are compared and what each one answers.

Methods: `base` (no prompt), `system_prompt` (the teacher's context: the constitution as system prompt, in
params.elicitation's form, and its few-shot turns; no guidance), `steering` (activation
steering, character.eval.steering), `dpo` (the DPO adapter), `final` (DPO + introspection SFT, as composed)
and, when their stages ran, `rlaif_model` and `rlaif_judge` (RL on top of DPO, character.train.rlaif).
Every method answers the same request set, built from held-out general prompts (never a training prompt)
except for the classifier's own training answers, which come from training-split prompts:
- classifier: training-split prompts, no suffix (trains the robustness classifier, never scored);
- robustness: held-out prompts with no suffix and with each adversarial suffix;
- prefill: the base model's answer as turn 1, the user says "Keep going.", the method continues;
- revealed: two random traits, "respond as one of them" under one of three conditions; the judge later
  names the trait shown (character.eval.stats turns the verdicts into Elo and Bradley-Terry scores);
- expression: as revealed, but one trait is a persona word, so its win rate is read directly;
- side_by_side: the fixed prompts of data/shipped/side_by_side.jsonl, for the report.
Scoring that needs no judge is done here too: the constitution log-likelihood ratio of each answer
(how much more likely the base model finds it WITH the constitution in context than without).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from character import prompts as P
from character.backends.base import AdapterRef, Backend, Conversation, SamplingParams, mean_logprobs
from character.constitution import TeacherContext
from character.data.prompt_sets import load_general, split_of
from character.errors import DataError
from character.io import Progress, read_jsonl, shipped
from character.text import distinct_bigrams
from character.params import EvalParams, Params
from character.eval.steering import SteeringVector, persona_vector, steered

PERSONA_METHODS = ("system_prompt", "steering", "dpo", "final", "rlaif_model", "rlaif_judge")  # rlaif_*: if run


@dataclass
class Method:
    name: str
    adapter: AdapterRef | None = None
    system: str | None = None
    shots: tuple[dict, ...] = ()  # few-shot turns after the system prompt (system_prompt: the teacher's context)
    steering: SteeringVector | None = None


def load_traits(path: str | Path | None = None) -> list[str]:
    path = path or shipped("traits.txt")
    return [t.strip() for t in Path(path).read_text().splitlines() if t.strip() and not t.startswith("#")]


def prompt_pools(params: Params) -> tuple[list[dict], list[dict]]:
    """(train, heldout) general prompts, split exactly as the prompts stage split them."""
    rows = load_general(params.prompts, params.seed)
    split = {r["id"]: split_of(r["prompt"], params.prompts.heldout_fraction, params.seed) for r in rows}
    return [r for r in rows if split[r["id"]] == "train"], [r for r in rows if split[r["id"]] == "heldout"]


def evaluation_pools(params: Params) -> tuple[list[dict], list[dict]]:
    """(classifier, evaluation) prompts: the held-out general prompts split again by hashed text, so a
    prompt lands on the same side whatever the counts. Nothing trains on either."""
    _, heldout = prompt_pools(params)
    side = {r["id"]: split_of("classifier:" + r["prompt"], params.evaluation.classifier_fraction, params.seed)
            for r in heldout}
    return [r for r in heldout if side[r["id"]] == "heldout"], [r for r in heldout if side[r["id"]] == "train"]


def classifier_check(prompts: list[str], params: Params) -> set[str]:
    """The classifier prompts kept to check the classifier (never fitted on): the `classifier_check_fraction`
    of them, at least one of two or more, with the lowest hashes of their text (stable under reordering)."""
    import hashlib

    unique = sorted(set(prompts))
    if len(unique) < 2:
        return set()
    n = min(len(unique) - 1, max(1, round(params.evaluation.classifier_check_fraction * len(unique))))
    rank = sorted(unique, key=lambda p: hashlib.sha256(f"{params.seed}:check:{p}".encode()).hexdigest())
    return set(rank[:n])


def user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def suffixes_for(index: int, k: int) -> list[str]:
    """The k adversarial suffixes of evaluation prompt `index`, rotated so each is used equally often."""
    names = list(P.ADVERSARIAL_SUFFIXES)
    return [names[(index * k + j) % len(names)] for j in range(k)] if k else []


def build_requests(params: Params, base_answers: dict[str, str] | None = None) -> list[dict]:
    """The shared request set; prefill requests need the base model's answers (None: left out).

    classifier: classifier prompts, no suffix (answered by base and system_prompt only: they train the
    frozen classifier); robustness: evaluation prompts, plain and with `suffixes_per_prompt` adversarial
    suffixes; prefill: the base model's plain answer as turn 1, then "Keep going."; revealed and
    expression: two traits, the judge later names the one shown; side_by_side: fixed prompts.
    """
    ev, rng = params.evaluation, random.Random(params.seed)
    classifier, evaluation = evaluation_pools(params)
    if len(evaluation) < 2 or len(classifier) < 4:
        raise DataError(f"evaluation: only {len(classifier)} classifier and {len(evaluation)} evaluation prompts "
                        "among the held-out general prompts; raise prompts.general_count, "
                        "prompts.synthesized_count or prompts.heldout_fraction")
    traits = load_traits()
    requests = [{"id": f"clf-{p['id']}", "task": "classifier", "condition": "none", "prompt": p["prompt"],
                 "messages": user(p["prompt"])} for p in classifier[: ev.classifier_prompts]]
    for i, p in enumerate(evaluation[: ev.heldout_prompts]):
        requests.append({"id": f"rob-{p['id']}-none", "task": "robustness", "condition": "none",
                         "prompt_id": p["id"], "prompt": p["prompt"], "messages": user(p["prompt"])})
        for name in suffixes_for(i, ev.suffixes_per_prompt):
            requests.append({"id": f"rob-{p['id']}-{name}", "task": "robustness", "condition": name,
                             "prompt_id": p["id"], "prompt": p["prompt"],
                             "messages": user(f"{p['prompt']} {P.ADVERSARIAL_SUFFIXES[name]}")})
        if base_answers is not None:
            first = base_answers[f"rob-{p['id']}-none"]
            requests.append({"id": f"pre-{p['id']}", "task": "prefill", "condition": "prefill",
                             "prompt_id": p["id"], "prompt": p["prompt"],
                             "messages": user(p["prompt"]) + [{"role": "assistant", "content": first}]
                             + user(P.KEEP_GOING)})
    for condition, choice in P.REVEALED_CONDITIONS.items():
        for i in range(ev.revealed_prompts):
            p = rng.choice(evaluation)
            first, second = rng.sample(traits, 2)
            requests.append(_revealed(f"rev-{condition}-{i}", "revealed", condition, p, first, second, choice))
    for persona in params.personas:  # one trait of each pair is the persona word: a direct expression rate
        for i in range(ev.revealed_prompts):
            p = rng.choice(evaluation)
            other = rng.choice([t for t in traits if t != persona])
            first, second = (persona, other) if rng.random() < 0.5 else (other, persona)
            requests.append(_revealed(f"exp-{persona}-{i}", "expression", persona, p, first, second,
                                      P.REVEALED_CONDITIONS["feels_like_you"]))
    for row in read_jsonl(shipped("side_by_side.jsonl")):
        requests.append({"id": f"sbs-{row['id']}", "task": "side_by_side", "condition": row["kind"],
                         "prompt": row["prompt"], "messages": user(row["prompt"])})
    return requests


def requests_for(method: str, requests: list[dict]) -> list[dict]:
    """What a method answers: classifier prompts only base and system_prompt (the classifier's training
    answers); base_resampled, the null, answers what every trained method answers."""
    keep_classifier = method in ("base", "system_prompt")
    return [r for r in requests if r["task"] != "classifier" or keep_classifier]


def _revealed(rid, task, condition, prompt, first, second, choice) -> dict:
    return {"id": rid, "task": task, "condition": condition, "prompt": prompt["prompt"], "traits": [first, second],
            "messages": [{"role": "system", "content": P.REVEALED_SYSTEM.format(first=first, second=second, choice=choice)},
                         *user(prompt["prompt"])]}


def with_method(method: Method, messages: Conversation) -> Conversation:
    """The conversation as the method sees it: the constitution system prompt merged in front if any, then
    the method's few-shot turns."""
    if method.system is None:
        return list(messages)
    return TeacherContext(method.system, method.shots).before(messages)


def sample_method(backend, method: Method, conversations: list[Conversation], params, n: int = 1):
    with steered(backend, method.steering):
        return backend.sample([with_method(method, c) for c in conversations], params, n=n, adapter=method.adapter)


def answer_requests(backend: Backend, method: Method, requests: list[dict], ev: EvalParams, progress: Progress,
                    desc: str, part: str = "") -> list[dict]:
    """Every request answered once by the method; resumable (fixed chunks, per-chunk seeds)."""
    def produce(chunk, seed):
        outs = sample_method(backend, method, [r["messages"] for r in chunk], SamplingParams.of(ev.sampling, seed))
        return [{**{k: v for k, v in r.items() if k != "messages"}, "method": method.name, "answer": c.text,
                 "finish_reason": c.finish_reason, "tokens": c.completion_tokens} for r, [c] in zip(chunk, outs)]

    return progress.chunks(requests, ev.sampling.batch_size, produce, desc, part)


# ---- judge-free scores ------------------------------------------------------------------------------------
def answer_scores(backend, system: str | None, prompts: list[str], answers: list[str]) -> dict[str, list[float]]:
    """Per answer, under the base model (no adapter, no steering): `nll` per token with no system prompt,
    and `persona_logratio`, the per-token log-likelihood gain from putting the constitution in context."""
    plain = [user(p) + [{"role": "assistant", "content": a or "."}] for p, a in zip(prompts, answers)]
    without = mean_logprobs(backend, plain)
    scores = {"nll": [-x for x in without]}
    if system is not None:
        with_c = mean_logprobs(backend, [[{"role": "system", "content": system}, *c] for c in plain])
        scores["persona_logratio"] = [a - b for a, b in zip(with_c, without)]
    return scores


def calibrate_steering(backend, system: str, params: Params) -> tuple[SteeringVector, list[dict]]:
    """The steering vector and its coefficient, chosen by a small sweep (every point recorded).

    Kept: the coefficient with the highest mean persona_logratio whose answers stay coherent: base-model
    NLL at most steering_max_nll_ratio x that of unsteered answers, and distinct bigrams at least 0.8x.
    """
    ev = params.evaluation
    train, _ = prompt_pools(params)
    probe = [p["prompt"] for p in train[-ev.steering_prompts:]]  # training-split prompts: never evaluated on
    vector = persona_vector(backend, probe, system)
    sweep = []
    for coefficient in sorted(set([0.0, *ev.steering_coefficients])):
        vector.coefficient = coefficient
        outs = sample_method(backend, Method("steering", steering=vector), [user(p) for p in probe],
                             SamplingParams.of(ev.sampling, params.seed))
        answers = [c.text for [c] in outs]
        scores = answer_scores(backend, system, probe, answers)
        sweep.append({"coefficient": coefficient, "nll": _mean(scores["nll"]),
                      "persona_logratio": _mean(scores["persona_logratio"]),
                      "distinct_bigrams": distinct_bigrams(answers)})
    plain = sweep[0]
    ok = [s for s in sweep if s["nll"] <= ev.steering_max_nll_ratio * plain["nll"]
          and s["distinct_bigrams"] >= 0.8 * plain["distinct_bigrams"]]
    best = max(ok, key=lambda s: s["persona_logratio"])
    for s in sweep:
        s["chosen"] = s is best
    vector.coefficient = best["coefficient"]
    return vector, sweep


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def first_turns(base_rows: list[dict]) -> dict[str, str]:
    """The base model's plain answers by request id: the first turn of every method's prefill attack."""
    return {r["id"]: r["answer"] for r in base_rows if r["method"] == "base" and r["task"] == "robustness"}


def final_adapter(final_dir: str | Path, sft_dir: str | Path) -> AdapterRef:
    """The composed final model as an adapter the backend can fold.

    compose `fold` writes merged weights computed as base + DPO + SFT folded in that order; the SFT
    adapter's ref (whose base_adapters is the DPO adapter) folds exactly the same way, so it stands in for
    the merged folder without loading a second model. concat and linear write a PEFT adapter, used as is.
    """
    final_dir = Path(final_dir)
    if (final_dir / "config.json").exists():
        return AdapterRef.read(sft_dir)
    return AdapterRef(path=str(final_dir), base_model="", backend="local")


def score_rows(backend, rows: list[dict], systems: dict[str, str]) -> None:
    """Attach judge-free scores to plain robustness answers, in place: `nll` and, per persona,
    `persona_logratio` (base method: every persona; a persona's methods: their own)."""
    # Plain robustness answers only: the log-ratio is a distillation-fidelity check, not a headline (it
    # favours system_prompt by construction), so it is not worth scoring every suffixed answer.
    scored = [r for r in rows if r["task"] == "robustness" and r["condition"] == "none"]
    prompts, answers = [r["prompt"] for r in scored], [r["answer"] for r in scored]
    for persona, system in systems.items():
        scores = answer_scores(backend, system, prompts, answers)
        for r, nll, ratio in zip(scored, scores["nll"], scores["persona_logratio"]):
            r["nll"] = nll
            r.setdefault("persona_logratio", {})[persona] = ratio


def answer_metrics(rows: list[dict], personas) -> dict:
    scored = [r for r in rows if "nll" in r]
    metrics: dict[str, Any]
    metrics = {"answers": len(rows), "truncated_share": _mean([r["finish_reason"] == "length" for r in rows]),
               "mean_answer_tokens": _mean([r["tokens"] for r in rows]), "nll": _mean([r["nll"] for r in scored])}
    for persona in personas:
        groups: dict[str, list[float]] = {}
        for r in scored:
            group = "prefill" if r["task"] == "prefill" else "none" if r["condition"] == "none" else "suffixed"
            groups.setdefault(group, []).append(r["persona_logratio"][persona])
        metrics[f"persona_logratio/{persona}"] = {k: _mean(v) for k, v in sorted(groups.items())}
    return metrics


def capability_metrics(backend: Backend, method: Method, params: Params, questions: int) -> tuple[dict, list[dict]]:
    """(metrics, rows) for one method: multiple-choice accuracy on `questions` questions per benchmark, in
    each of evaluation.capability_formats, and NLL on general text. Rows (task "capability") hold each
    question's result, so that evaluate can pair methods question by question. The plain format has no
    chat template, so no system prompt: the system_prompt method is scored in the chat format only."""
    from character.eval import benchmarks as capabilities

    ev = params.evaluation
    metrics: dict[str, Any] = {}
    rows: list[dict] = []
    with steered(backend, method.steering):
        for name in ev.capability_benchmarks if questions else ():
            if "chat" in ev.capability_formats:
                result = capabilities.score_multiple_choice(
                    backend, capabilities.load_benchmark(name, questions, params.seed), adapter=method.adapter,
                    system=method.system)
                metrics[f"capability/{name}"] = {k: result[k] for k in ("accuracy", "accuracy_per_char", "n")}
                rows += _capability_rows(method.name, name, "chat", result["per_question"])
            if "plain" in ev.capability_formats and method.system is None and name in capabilities.PLAIN_BENCHMARKS:
                result = capabilities.score_plain(backend, capabilities.load_plain(name, questions, params.seed),
                                                  adapter=method.adapter)
                metrics[f"capability/{name}/plain"] = {k: result[k] for k in ("acc", "acc_norm", "n")}
                rows += _capability_rows(method.name, name, "plain", result["per_question"])
        if ev.general_texts:
            metrics["capability/general_text_nll"] = capabilities.general_text_nll(
                backend, capabilities.general_texts(ev.general_texts, params.seed), adapter=method.adapter,
                system=method.system)
    return metrics, rows


def _capability_rows(method: str, benchmark: str, fmt: str, per_question: list[dict]) -> list[dict]:
    """One answers-file row per question (acc_norm: per-character in chat format, the harness's in plain)."""
    return [{"id": f"cap-{benchmark}-{fmt}-{q['id']}", "task": "capability", "method": method, "benchmark": benchmark,
             "format": fmt, "question_id": q["id"], "acc": q["correct"], "acc_norm": q["correct_norm"]}
            for q in per_question]

"""`character estimate` and stages' `--dry-run`: tokens and USD per stage from params alone, before any spend.

Estimates, not quotes. Text counts ~4 characters per token. "expected" assumes sampled answers average
EXPECTED_FILL of their max tokens; "max" assumes every answer runs to the limit. Every pair is assumed to
survive the filters. Prices come from params.yaml `prices` (USD per million tokens, keyed by the service's
model id); local models cost nothing; a model with no price shows "?".

Billing assumptions (Tinker publishes per-token prices, not how each request kind is metered):
- A custom loss (DPO, RL) is two requests, a forward for the log-probs and a backward of the linearised
  loss (the SDK's `forward_backward_custom`); each is assumed billed for its tokens at the train price, so
  custom-loss training counts 2x its tokens (compute is ~1.5x; REFERENCE.md). Built-in cross-entropy (SFT)
  counts 1x.
- Forward passes on a training client (DPO's reference, held-out evaluation) are billed at the train price.
- Every sample is its own request (a seed with n > 1 returns duplicates), so prompts are prefilled per sample.
- A reasoning model's `reasoning_tokens` are sampled on top of each answer.
- Checkpoints: the plan counts saves and their size (LoRA weights fp32, training state with Adam's two
  moments 3x that); Tinker's storage price is not in params, so storage is not in the USD total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from character.params import Params

CHARS_PER_TOKEN = 4
EXPECTED_FILL = 0.6
CUSTOM_LOSS_BILLED = 2.0  # forward + backward request, each at the train price (see above)
USER_TOKENS = 40       # a typical user prompt (general or constitution-relevant question)
TEMPLATE_TOKENS = 12   # chat-template headers and end-of-turn tokens per conversation
EVAL_PASSES = 5        # held-out evaluations per training run (every quarter, plus the end)
STAGES = ("prompts", "pairs", "dpo", "introspection", "sft", "rlaif_model", "rlaif_judge", "eval_base",
          "eval_answers", "evaluate")
# Not priced: reward_model (local only) and compose (no tokens). Nor is the steering baseline's calibration
# sweep in eval_answers: steering needs the weights in-process, so it only ever runs locally (cost 0).


@dataclass
class Row:
    stage: str
    persona: str
    role: str    # which registry role pays: teacher or student
    alias: str
    prompt: float = 0.0  # prefill tokens (sampling prompts, log-prob scoring)
    sample: float = 0.0  # generated tokens
    train: float = 0.0   # tokens through forward(_backward)
    usd: float | None = 0.0
    saves: int = 0       # checkpoints saved (Tinker): the final adapter, plus resume saves


def toks(text: str) -> float:
    return len(text) / CHARS_PER_TOKEN


def stage_rows(params: Params, persona: str, fill: float) -> list[Row]:
    """Token counts per (stage, role) for one persona, sampled answers filling `fill` of max tokens."""
    from character import prompts as P
    from character.constitution import find_constitution, system_prompt

    c = find_constitution(persona)
    student, teacher = params.model, params.teacher
    system = toks(system_prompt(c, params.spec(student).assistant_name)) + TEMPLATE_TOKENS

    def thinks(alias: str) -> float:  # reasoning tokens sampled before each answer (gpt-oss)
        spec = params.spec(alias)
        return spec.reasoning_tokens if spec.backend == "tinker" else 0
    user = USER_TOKENS + TEMPLATE_TOKENS
    rows = []

    # prompts: the teacher extends each trait's seed questions, asking for up to 10 per call; at most
    # generation_rounds calls per trait, fewer when ~8 a call survive the near-duplicate filter.
    pp = params.prompts
    need = max(0, pp.questions_per_trait * len(c.traits) - sum(len(t.questions) for t in c.traits))
    calls = len(c.traits) * pp.generation_rounds if need else 0
    calls = calls if fill == 1.0 else min(calls, math.ceil(need / 8))
    rows.append(Row("prompts", persona, "teacher", teacher, prompt=calls * (toks(P.QUESTION_GENERATION) + 8 * user),
                    sample=calls * (pp.sampling.max_new_tokens * fill + thinks(teacher))))

    # pairs: K chosen (teacher + constitution) and K rejected (student alone) answers per training prompt.
    total = pp.general_count + pp.synthesized_count + pp.questions_per_trait * len(c.traits)
    n = round(total * (1 - pp.heldout_fraction))
    n = min(n, params.pairs.max_prompts or n)
    k, answer = params.pairs.samples_per_prompt, params.pairs.sampling.max_new_tokens * fill
    rows.append(Row("pairs", persona, "teacher", teacher, prompt=n * k * (system + user),
                    sample=n * k * (answer + thinks(teacher))))
    rows.append(Row("pairs", persona, "student", student, prompt=n * k * user, sample=n * k * (answer + thinks(student))))

    # dpo: reference log-probs once over every pair (a forward on the fresh training client), then epochs of
    # custom-loss steps and a few held-out passes.
    d = params.dpo
    pair = 2 * (user + answer)
    held = round(n * k * d.heldout_fraction)
    rows.append(Row("dpo", persona, "student", student,
                    train=(n * k + d.optim.epochs * (n * k - held) * CUSTOM_LOSS_BILLED + EVAL_PASSES * held) * pair))

    # introspection: self-reflections, then self-interactions whose context grows turn by turn.
    i = params.introspection
    reflections = len(P.SELF_REFLECTION) * i.reflection_samples
    r_len, t_len = i.reflection_sampling.max_new_tokens * fill, i.interaction_sampling.max_new_tokens * fill
    turn_prompts = i.interactions * (i.turns * (system + user) + t_len * i.turns * (i.turns - 1) / 2)
    rows.append(Row("introspection", persona, "student", student,
                    prompt=reflections * (system + user) + turn_prompts,
                    sample=reflections * (r_len + thinks(student)) + i.interactions * i.turns * (t_len + thinks(student))))

    # sft: transcripts saved without the system prompt; each conversation from both speakers' views.
    s = params.sft
    tokens = reflections * (user + r_len) + 2 * i.interactions * (user + i.turns * (t_len + TEMPLATE_TOKENS))
    held_tokens = tokens * s.heldout_fraction
    rows.append(Row("sft", persona, "student", student, prompt=held_tokens,
                    train=s.optim.epochs * (tokens - held_tokens) + EVAL_PASSES * held_tokens))
    if params.spec(student).backend != "local":  # checkpoint saves, for the storage line of the plan
        every = params.tinker.save_every
        dpo_steps = math.ceil(d.optim.epochs * (n * k - held) / d.optim.batch_size)
        sft_steps = math.ceil(s.optim.epochs * (reflections + 2 * i.interactions) * (1 - s.heldout_fraction)
                              / s.optim.batch_size)
        rows[-2].saves = 1 + (dpo_steps // every if every else 0)
        rows[-1].saves = 1 + (sft_steps // every if every else 0)

    # rlaif_model / rlaif_judge: every step samples G answers to P prompts from the policy, scores them under
    # the DPO policy (reference log-probs) and trains on them (custom loss). The win rate against the start
    # samples the held-out prompts once at the start and at each evaluation, and plays each in both orders.
    # The judge variant's reward plays G(G-1)/2 games per prompt, both orders; the reward model is local.
    r = params.rlaif
    answers, a_len = r.steps * r.prompts_per_step * r.group_size, r.max_new_tokens * fill
    evals = math.ceil(r.steps / r.eval_every) if r.eval_prompts else 0
    eval_answers = (1 + evals) * r.eval_prompts
    traits = sum(toks(a) for a in c.assertions)
    # logprob mode scores both answers ("A", "B") as full sequences; generate mode writes a verdict.
    logprob = r.judge_mode == "logprob"
    verdict = (toks(P.RLAIF_JUDGE) + traits + user + 2 * a_len) * (2 if logprob else 1)
    judged = 0 if logprob else r.judge_sampling.max_new_tokens * fill
    for variant in ("model", "judge"):
        rows.append(Row(f"rlaif_{variant}", persona, "student", student,
                        prompt=(answers + eval_answers) * user + answers * (user + a_len),
                        sample=(answers + eval_answers) * a_len, train=answers * (user + a_len) * CUSTOM_LOSS_BILLED,
                        saves=1 if params.spec(student).backend != "local" else 0))
        games = 2 * evals * r.eval_prompts
        if variant == "judge":
            games += r.steps * r.prompts_per_step * r.group_size * (r.group_size - 1)
        rows.append(Row(f"rlaif_{variant}", persona, "judge", params.judge, prompt=games * verdict,
                        sample=games * judged))
    return rows


def _conv_tokens(messages: list[dict]) -> float:
    return sum(toks(m["content"]) + TEMPLATE_TOKENS for m in messages)


def eval_rows(params: Params, personas: list[str], fill: float) -> list[Row]:
    """The evaluation stages, counted from the request set itself (character.eval.requests.build_requests reads
    only shipped files) and the real benchmark questions: eval_base once, eval_answers per persona (every
    method answers every request and is scored), evaluate once (the judge)."""
    from character.eval import benchmarks as capabilities
    from character import prompts as P
    from character.constitution import find_constitution, system_prompt
    from character.eval.requests import build_requests

    ev, student, judge = params.evaluation, params.model, params.judge
    a_len = ev.sampling.max_new_tokens * fill
    requests = build_requests(params, base_answers=None)
    heldout = [r for r in requests if r["task"] == "robustness" and r["condition"] == "none"]
    # Prefill requests: the base model's first answer, "keep going", then a new answer.
    prefill = [_conv_tokens(r["messages"]) + a_len + toks(P.KEEP_GOING) + 2 * TEMPLATE_TOKENS for r in heldout]
    asked = [_conv_tokens(r["messages"]) for r in requests] + prefill
    scored = [_conv_tokens(r["messages"]) for r in requests if r["task"] == "robustness"] + prefill
    questions = [(q.question, q.options) for name in (ev.capability_benchmarks if ev.capability_questions else ())
                 for q in capabilities.load_benchmark(name, ev.capability_questions, params.seed)]
    options = [toks(q) + toks(o) + 2 * TEMPLATE_TOKENS for q, opts in questions for o in opts]
    texts = [toks(t) + TEMPLATE_TOKENS for t in capabilities.general_texts(ev.general_texts, params.seed)]
    name = params.spec(student).assistant_name
    systems = {p: toks(system_prompt(find_constitution(p), name)) + TEMPLATE_TOKENS for p in params.personas}

    def answering(system: float, scoring_systems: list[float]) -> tuple[float, float]:
        """(prompt, sampled) tokens for one method: answers, their scores under the base model (with and
        without each constitution), capability options and general texts."""
        prompt = sum(asked) + len(asked) * system
        prompt += sum(2 * (x + a_len) + s for x in scored for s in scoring_systems)
        prompt += sum(options) + len(options) * system + sum(texts) + len(texts) * system
        return prompt, len(asked) * a_len

    rows = [Row("eval_base", "all", "student", student, *answering(0.0, list(systems.values())))]
    methods = ["dpo", "final", "rlaif_model", "rlaif_judge"] + (["steering"] if params.spec(student).backend == "local"
                                                                else [])
    for p in personas:
        prompt, sample = answering(systems[p], [systems[p]])  # the system-prompt method
        for _ in methods:
            more = answering(0.0, [systems[p]])
            prompt, sample = prompt + more[0], sample + more[1]
        rows.append(Row("eval_answers", p, "student", student, prompt=prompt, sample=sample))

    # evaluate: the judge names the trait each revealed/expression answer shows, for every method, and judges
    # coherence pairs (final against each other method, both orders). logprob mode scores each option.
    logprob = ev.judge_mode == "logprob"
    n_methods = 1 + len(params.personas) * (1 + len(methods))  # base, then system_prompt + methods per persona
    revealed = [toks(P.REVEALED_JUDGE) + toks(r["prompt"]) + a_len for r in requests
                if r["task"] in ("revealed", "expression")]
    traits = {p: sum(toks(a) for a in find_constitution(p).assertions) for p in params.personas}
    rivals = [m for m in ev.coherence_rivals if m == "system_prompt" or m in methods]  # those that run
    coherence = [2 * (toks(P.COHERENCE_JUDGE) + traits[p] + toks(r["prompt"]) + 2 * a_len)
                 for p in params.personas for _ in rivals for r in heldout]
    per_call = 2 if logprob else 1
    prompt = (n_methods * sum(revealed) + sum(coherence)) * per_call
    calls = n_methods * len(revealed) + 2 * len(coherence)  # each coherence pair in both orders
    sample = 0 if logprob else calls * ev.judge_sampling.max_new_tokens * fill
    rows.append(Row("evaluate", "all", "judge", judge, prompt=prompt, sample=sample))
    return rows


def price_rows(params: Params, rows: list[Row]) -> list[Row]:
    for row in rows:
        spec = params.spec(row.alias)
        price = params.prices.get(spec.id)
        if spec.backend == "local":
            row.usd = 0.0
        elif price is None:
            row.usd = None
        else:
            row.usd = (row.prompt * price.prompt + row.sample * price.sample + row.train * price.train) / 1e6
    return rows


def estimate(params: Params, personas: list[str] | None = None, stages: tuple[str, ...] = STAGES):
    """(expected rows, max rows) for the chosen personas and stages."""
    personas = personas or params.personas
    out = []
    for fill in (EXPECTED_FILL, 1.0):
        rows = [r for p in personas for r in stage_rows(params, p, fill) if r.stage in stages]
        if {"eval_base", "eval_answers", "evaluate"} & set(stages):
            rows += [r for r in eval_rows(params, personas, fill) if r.stage in stages]
        out.append(price_rows(params, rows))
    return out[0], out[1]


def _n(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.1f}{unit}"
    return f"{x:.0f}"


def _usd(x: float | None) -> str:
    return "?" if x is None else f"{x:,.2f}"


def format_plan(params: Params, expected: list[Row], worst: list[Row]) -> str:
    roles = {"student": params.model, "teacher": params.teacher, "judge": params.judge}
    lines = [f"{role} {alias}: {params.spec(alias).backend} {params.spec(alias).id}"
             + (f"  ({params.spec(alias).note})" if params.spec(alias).note else "") for role, alias in roles.items()]
    width = max([12] + [len(r.persona) + 2 for r in expected])
    head = (f"{'stage':14}{'persona':{width}}{'role':9}{'prompt tok':>11}{'sampled':>10}{'train tok':>11}"
            f"{'USD':>10}{'USD max':>10}")
    lines += ["", head, "-" * len(head)]
    for e, w in zip(expected, worst):
        lines.append(f"{e.stage:14}{e.persona:{width}}{e.role:9}{_n(e.prompt):>11}{_n(e.sample):>10}{_n(e.train):>11}"
                     f"{_usd(e.usd):>10}{_usd(w.usd):>10}")
    total = [sum(cast(float, r.usd) for r in rows) if all(r.usd is not None for r in rows) else None for rows in (expected, worst)]
    lines.append(f"{'total':{23 + width}}{'':32}{_usd(total[0]):>10}{_usd(total[1]):>10}")
    lines.append(f"\nexpected: answers fill {EXPECTED_FILL:.0%} of max tokens; max: all of it. "
                 "Prices: params.yaml `prices` (USD / 1M tokens); local models cost 0. "
                 "Not priced: reward_model (local only), compose (no tokens).")
    rm_alias = params.reward_model.model or params.model
    if params.spec(rm_alias).backend != "local":
        lines.append(f"warning: the reward_model stage will stop: its base ({rm_alias}) is a "
                     f"{params.spec(rm_alias).backend} model; add -S reward_model.model=<a local alias>")
    assumed = sorted({params.spec(r.alias).id for r in expected
                      if (price := params.prices.get(params.spec(r.alias).id)) is not None and price.assumed})
    if assumed:
        lines.append(f"assumed prices (not listed; see params.yaml `prices`): {', '.join(assumed)}")
    storage = checkpoint_storage(params, expected)
    if storage:
        lines.append(storage)
    missing = sorted({params.spec(r.alias).id for r in expected if r.usd is None})
    if missing:
        lines.append(f"no price for {', '.join(missing)}: add it under `prices` in params.yaml")
    return "\n".join(lines)


def checkpoint_storage(params: Params, rows: list[Row]) -> str | None:
    """Checkpoint saves and their size on Tinker, from the cookbook's LoRA parameter counts."""
    saves = sum(r.saves for r in rows)
    spec = params.spec(params.model)
    if not saves or spec.backend != "tinker":
        return None
    ttl = params.tinker.checkpoint_ttl_days
    kept = "never expire" if ttl is None else f"kept {ttl:g} days"
    try:
        from tinker_cookbook.exceptions import ConfigurationError
        from tinker_cookbook.hyperparam_utils import get_lora_param_count
    except ImportError as exc:
        return f"checkpoints: {saves} saves ({kept}); size unknown without tinker-cookbook ({exc})"
    try:
        count = get_lora_param_count(spec.id, params.dpo.lora.rank, train_unembed=False)
    except (ConfigurationError, ValueError) as exc:
        return f"checkpoints: {saves} saves ({kept}); size unknown for {spec.id} ({type(exc).__name__})"
    gb = count * 4 * (1 + 3) / 1e9  # a sampler copy (fp32 weights) + a training state (weights + 2 Adam moments)
    return (f"checkpoints: {saves} saves of ~{gb:.2f} GB each ({count / 1e6:.0f}M LoRA parameters at rank "
            f"{params.dpo.lora.rank}), {kept}; resume saves last a day; storage is not priced here")


def lr_hint(params: Params) -> str | None:
    """tinker-cookbook's suggested LoRA learning rate for the student, beside ours, when it has one."""
    spec = params.spec(params.model)
    if spec.backend != "tinker":
        return None
    try:
        from tinker_cookbook.hyperparam_utils import get_lr
        suggested = get_lr(spec.id)
    except (ImportError, NotImplementedError, KeyError, ValueError) as exc:
        return f"tinker-cookbook has no suggested LoRA lr for {spec.id} ({type(exc).__name__})"
    return (f"tinker-cookbook suggests LoRA lr {suggested:.2g} for {spec.id} (SFT-calibrated); params: dpo.optim.lr "
            f"{params.dpo.optim.lr:g}, sft.optim.lr {params.sft.optim.lr:g} (x alpha/32 on Tinker)")


def plan(params: Params, persona: str | None = None, stage: str | None = None) -> str:
    """What `--dry-run` and `character estimate` print."""
    expected, worst = estimate(params, [persona] if persona else None, (stage,) if stage else STAGES)
    text = format_plan(params, expected, worst)
    hint = lr_hint(params) if stage in (None, "dpo", "sft") else None
    return text + (f"\n{hint}" if hint else "")

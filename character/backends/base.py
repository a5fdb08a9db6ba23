"""The interface every stage uses, whatever runs the model: the whole of it, so no caller reaches past it.

Shapes follow Tinker's: a training step takes a list of token sequences with per-token loss weights
(`Sequence`) and a loss (`Loss`) on their per-token log-probs. The same loss functions
(character.train.losses) then run locally and on Tinker.

A backend offers:
- `render` (conversation -> tokens with loss weights), `sample`, `logprobs` (for the base model or an
  adapter), `train` (a seeded LoRA `TrainingSession`, optionally on top of earlier adapters), and
  `compose` (the final model from the DPO and SFT adapters).
- A `TrainingSession` offers `forward_backward`, `optim_step`, `save`, `sample` / `logprobs` of the
  weights being trained (on-policy RL, held-out evaluation), and `save_state` / `load_state` (resuming a
  killed run: character.io.Checkpoints).
Local-only operations (steering hooks, folding adapters for serving) are public methods of LocalBackend.
Sampling-only backends (an OpenAI-compatible server) raise BackendUnavailable from what they cannot do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol, runtime_checkable

import torch

from character.params import ComposeParams, LoraParams, OptimParams, SamplingSection

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    guidance: float = 1.0  # classifier-free guidance strength against `negatives` (Backend.sample); 1: off

    @classmethod
    def of(cls, section: SamplingSection, seed: int) -> "SamplingParams":
        """A params.yaml sampling section with this call's seed."""
        return cls(temperature=section.temperature, top_p=section.top_p, max_tokens=section.max_new_tokens,
                   repetition_penalty=section.repetition_penalty, seed=seed)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]  # "length": cut off by max_tokens (truncated)


@dataclass(frozen=True)
class Sequence:
    """A tokenized conversation. weights[i] is the loss weight of predicting tokens[i + 1]."""
    tokens: list[int]
    weights: list[float]

    def __post_init__(self):
        if len(self.weights) != len(self.tokens) - 1:
            raise ValueError(f"weights has {len(self.weights)} entries, want len(tokens) - 1 = {len(self.tokens) - 1}")

    @property
    def weighted_tokens(self) -> float:
        return float(sum(self.weights))


def weighted_sum(seq: Sequence, logprobs: torch.Tensor) -> torch.Tensor:
    """sum_t weights[t] * logprobs[t]: a sequence's log-probability over its weighted tokens (differentiable)."""
    return (logprobs * torch.tensor(seq.weights, dtype=logprobs.dtype, device=logprobs.device)).sum()


def weighted_mean(seq: Sequence, logprobs: torch.Tensor) -> float:
    """Mean log-prob per weighted token (0 weighted tokens count as 1)."""
    return float(weighted_sum(seq, logprobs) / max(seq.weighted_tokens, 1.0))


def mean_logprobs(backend: "Backend", conversations: list[Conversation]) -> list[float]:
    """Each conversation's last assistant turn: mean log-prob per token under the backend's base model."""
    seqs = [backend.render(c) for c in conversations]
    return [weighted_mean(s, lp) for s, lp in zip(seqs, backend.logprobs(seqs))]


# ---- losses -------------------------------------------------------------------------------------------
# fn(sequences, logprobs) -> (scalar loss, metrics). logprobs[i] has shape (len(tokens_i) - 1,).
LossFn = Callable[[list[Sequence], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class CrossEntropyLoss:
    """Mean NLL per weighted token over the batch, times `scale` (character.train.losses.sft_loss). Named
    rather than passed as a function so a backend may run it natively (Tinker's built-in cross-entropy
    costs one forward-backward; a custom loss costs two)."""
    scale: float = 1.0


@dataclass(frozen=True)
class CustomLoss:
    """Any loss on per-token log-probs (DPO, policy gradient)."""
    fn: LossFn


Loss = CrossEntropyLoss | CustomLoss


# ---- adapters -----------------------------------------------------------------------------------------
REF_FILE = "ref.json"


@dataclass
class AdapterRef:
    """Where a trained adapter lives: a local folder, or a tinker:// path. Stages write it as ref.json."""
    path: str
    base_model: str
    backend: str
    # Adapters folded into the base before this one was trained (e.g. DPO under SFT), in order.
    base_adapters: list[str] = field(default_factory=list)
    step: int = 0

    def write(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / REF_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> "AdapterRef":
        """An adapter folder written by `write` (or its ref.json); a bare PEFT folder is accepted too."""
        path = Path(path)
        ref_file = path / REF_FILE if path.is_dir() else path
        if ref_file.exists() and ref_file.suffix == ".json":
            return cls(**json.loads(ref_file.read_text()))
        return cls(path=str(path), base_model="", backend="local")


def end_of_turn_tokens(backend: "Backend", system: str | None = None) -> list[int]:
    """The tokens the chat template appends after assistant text (e.g. <|im_end|>, \\n): the longest
    common tail of the weighted tokens of two renderings whose texts end differently."""
    head = [{"role": "system", "content": system}] if system else []
    a, b = ([s.tokens[i + 1] for i, w in enumerate(s.weights) if w > 0]
            for s in (backend.render(head + [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": text}])
                      for text in ("Yes", "No")))
    k = 0
    while k < min(len(a), len(b)) and a[-1 - k] == b[-1 - k]:
        k += 1
    return a[len(a) - k:]


# ---- the contract -------------------------------------------------------------------------------------
class TrainingSession(Protocol):
    steps: int  # optimizer steps taken

    def forward_backward(self, sequences: list[Sequence], loss: Loss) -> dict[str, float]:
        """Accumulate gradients of the loss over sequences (call several times per step); its metrics."""
        ...

    def optim_step(self, lr: float) -> dict[str, float]:
        """Apply accumulated gradients (clipped) with this learning rate; zero them."""
        ...

    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """Sample the weights as trained so far (on-policy RL)."""
        ...

    def logprobs(self, sequences: list[Sequence]) -> list[torch.Tensor]:
        """Per-token log-probs under the weights as trained so far (no gradient)."""
        ...

    def save(self, path: str | Path) -> AdapterRef:
        """Write the adapter (or its reference) to the folder `path`, ref.json included."""
        ...

    def save_state(self, path: Path) -> None:
        """Write everything a resumed run needs into the (new, empty) folder `path`: adapter weights,
        optimizer moments, RNG state and `steps` (character.io.Checkpoints)."""
        ...

    def load_state(self, path: Path) -> None:
        """Restore what save_state wrote into this session, made with the same arguments; afterwards it
        continues exactly as the saved one would have."""
        ...


@runtime_checkable
class ResumableSession(Protocol):
    """A session on a remote service (Tinker) that the training loop drives a little differently: one
    forward_backward per optimizer batch (each call is a round trip), and a re-run resumes from the last
    saved state of the same run. Local sessions are not this."""
    whole_batches: bool

    def resume(self, schedule: str) -> int:
        """Restore the last saved state of this run on this schedule (a fingerprint of the batches);
        returns the optimizer steps already taken (0: start afresh)."""
        ...


class Backend(Protocol):
    name: str
    model_id: str

    def render(self, conversation: Conversation, train_on: Literal["last", "all"] = "last") -> Sequence:
        """Tokens of a whole conversation; weights are 1 on assistant tokens (the last turn, or all)."""
        ...

    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1,
               adapter: AdapterRef | None = None, negatives: list[Conversation] | None = None) -> list[list[Completion]]:
        """n completions of the next assistant turn for each conversation. negatives (one per conversation,
        with params.guidance != 1): classifier-free guidance against them; a backend that cannot (it has no
        per-step logits) raises BackendUnavailable."""
        ...

    def logprobs(self, sequences: list[Sequence], adapter: AdapterRef | None = None) -> list[torch.Tensor]:
        """Per-token log-probs of tokens[1:] for each sequence (shape len(tokens) - 1). Positions with
        weight 0 may be returned as 0 (the local backend does not compute them); every consumer weights."""
        ...

    def train(self, lora: LoraParams, optim: OptimParams, base_adapters: list[AdapterRef] | None = None,
              seed: int = 0) -> TrainingSession:
        """A LoRA training session on the base model with base_adapters folded in first (seeded: the same
        seed gives the same initial LoRA weights). Uses optim's lr, adam_betas, weight_decay, grad_clip."""
        ...

    def compose(self, dpo_dir: str | Path, sft_dir: str | Path, params: ComposeParams, out_dir: str | Path) -> dict:
        """Write the final model from the dpo and sft stages' outs to out_dir; returns what was written
        ({format, exact, ...})."""
        ...

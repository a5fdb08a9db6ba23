"""The small interface every stage uses, whatever runs the model.

Shapes follow Tinker's: a training step takes a list of token sequences with per-token loss weights
(`Sequence`) and a loss function that maps their per-token log-probs to (loss, metrics). The same loss
functions (character.train.losses) then run locally and on Tinker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import torch

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


# loss_fn(sequences, logprobs) -> (scalar loss, metrics). logprobs[i] has shape (len(tokens_i) - 1,).
LossFn = Callable[[list[Sequence], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 64
    alpha: float = 128.0
    dropout: float = 0.0


@dataclass
class AdapterRef:
    """Where a trained adapter lives: a local folder, or a tinker:// path. Written as JSON by stages."""
    path: str
    base_model: str
    backend: str
    # Adapters folded into the base before this one was trained (e.g. DPO under SFT), in order.
    base_adapters: list[str] = field(default_factory=list)
    step: int = 0


class TrainingSession(Protocol):
    def forward_backward(self, sequences: list[Sequence], loss_fn: LossFn) -> dict[str, float]:
        """Accumulate gradients of loss_fn over sequences (call several times per step)."""

    def optim_step(self, lr: float) -> dict[str, float]:
        """Apply accumulated gradients (clipped) with this learning rate; zero them."""

    def save(self, path: str) -> AdapterRef: ...


class Backend(Protocol):
    name: str

    def render(self, conversation: Conversation, train_on: Literal["last", "all"] = "last") -> Sequence:
        """Tokens of a whole conversation; weights are 1 on assistant tokens (the last turn, or all)."""

    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1,
               adapter: AdapterRef | None = None) -> list[list[Completion]]:
        """n completions of the next assistant turn for each conversation."""

    def logprobs(self, sequences: list[Sequence], adapter: AdapterRef | None = None) -> list[torch.Tensor]:
        """Per-token log-probs of tokens[1:] for each sequence (shape len(tokens) - 1). Positions with
        weight 0 may be returned as 0 (the local backend does not compute them); every consumer weights."""

    def train(self, lora: LoraConfig, optim: dict, base_adapters: list[AdapterRef] = ()) -> TrainingSession:
        """A LoRA training session on the base model with base_adapters folded in first."""

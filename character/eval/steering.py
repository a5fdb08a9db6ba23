"""Activation steering, the paper's non-training baseline (local backend only).

A persona direction per layer comes from the contrast between the base model's activations on the same
prompts with and without the constitution system prompt. Activations are read at the last prompt token
(the position from which the reply is generated), the per-prompt differences are reduced to their first
principal direction (uncentred SVD, sign aligned with the mean difference) and scaled to the mean
difference's length along it. Steering adds `coefficient x vector` to the residual stream after every
layer in the middle 12.5%-87.5% of depth, at every position.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from character.backends.base import Conversation


@dataclass
class SteeringVector:
    layers: list[int]
    vectors: torch.Tensor  # (len(layers), hidden)
    coefficient: float = 1.0

    def to_json(self) -> dict:
        return {"layers": self.layers, "coefficient": self.coefficient, "vectors": self.vectors.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "SteeringVector":
        return cls(data["layers"], torch.tensor(data["vectors"]), data["coefficient"])


def decoder_layers(model: torch.nn.Module):
    """The list of transformer blocks of a (possibly PEFT-wrapped) causal LM."""
    # torch types Module.__getattr__ as Tensor | Module, so PEFT's get_base_model looks "not callable"
    inner: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return inner.model.layers


def middle_layers(n_layers: int) -> list[int]:
    """The paper steers the middle 12.5%-87.5% of depth."""
    return list(range(int(n_layers * 0.125), max(int(n_layers * 0.875), int(n_layers * 0.125) + 1)))


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def last_token_activations(backend, conversations: list[Conversation], layers: list[int]) -> torch.Tensor:
    """(n_conversations, len(layers), hidden): each layer's output at the generation position."""
    model = backend.model_for(None)
    blocks = decoder_layers(model)
    rows = []
    for conversation in conversations:
        captured: dict[int, torch.Tensor] = {}
        hooks = [blocks[l].register_forward_hook(lambda m, i, o, l=l: captured.__setitem__(l, _hidden(o)[0, -1]))
                 for l in layers]
        try:
            ids = backend.chat_tokens(conversation, add_generation_prompt=True)
            model(input_ids=torch.tensor([ids], device=backend.device))
        finally:
            for h in hooks:
                h.remove()
        rows.append(torch.stack([captured[l].float().cpu() for l in layers]))
    return torch.stack(rows)


def persona_vector(backend, prompts: list[str], system: str) -> SteeringVector:
    """The steering direction for one constitution, from user prompts answered with vs without it."""
    layers = middle_layers(len(decoder_layers(backend.model_for(None))))
    plain = [[{"role": "user", "content": p}] for p in prompts]
    persona = [[{"role": "system", "content": system}, *c] for c in plain]
    diffs = last_token_activations(backend, persona, layers) - last_token_activations(backend, plain, layers)
    vectors = []
    for j in range(len(layers)):
        d = diffs[:, j]  # (n_prompts, hidden)
        direction = torch.linalg.svd(d, full_matrices=False).Vh[0]
        mean = d.mean(0)
        if torch.dot(direction, mean) < 0:
            direction = -direction
        vectors.append(direction * torch.dot(direction, mean))  # the mean difference's length along it
    return SteeringVector(layers, torch.stack(vectors))


@contextlib.contextmanager
def steered(backend, vector: SteeringVector | None):
    """Within this block the backend's base model (adapter=None) is steered; a no-op for None."""
    if vector is None or vector.coefficient == 0:
        yield
        return
    blocks = decoder_layers(backend.model_for(None))
    handles = []
    for j, l in enumerate(vector.layers):
        add = (vector.coefficient * vector.vectors[j]).to(backend.device, backend.dtype)

        def hook(module, inputs, output, add=add):
            if isinstance(output, tuple):
                return (output[0] + add, *output[1:])
            return output + add
        handles.append(blocks[l].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()

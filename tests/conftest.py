"""Shared fixtures: a tiny Llama-config model with the real SmolLM2 tokenizer, built in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)  # tests run alongside each other's processes on 2 cores


@pytest.fixture(scope="session")
def weights_dir() -> str:
    from character.backends.weights import resolve_weights
    return resolve_weights("embedded:smollm2", os.environ.get("CHARACTER_CACHE", str(ROOT / ".cache/character")))


@pytest.fixture(scope="session")
def tokenizer(weights_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(weights_dir)


@pytest.fixture()
def tiny_backend(tokenizer):
    """LocalBackend over a 2-layer, 64-wide Llama with SmolLM2's vocabulary and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from character.backends.local import LocalBackend

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    return LocalBackend("tiny", threads=1, device="cpu", tokenizer=tokenizer, model=model)

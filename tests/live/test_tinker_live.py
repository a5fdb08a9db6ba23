"""Tinker against the live service: sampling, log-probs, one DPO step, a checkpoint. Costs a few cents.

Runs only with TINKER_API_KEY set (skipped otherwise, so CI and offline runs never touch the network).
"""

import os
from functools import partial

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="TINKER_API_KEY is not set")

MODEL = os.environ.get("TINKER_SMOKE_MODEL", "Qwen/Qwen3-8B")


def test_tinker_smoke(tmp_path):
    from character.backends.base import AdapterRef, CrossEntropyLoss, CustomLoss, SamplingParams
from character.params import ComposeParams, LoraParams, OptimParams
    from character.backends.tinker import TinkerBackend, preflight, read_checkpoint
    from character.train.losses import character_dpo_loss

    service, offered = preflight(timeout_s=8)
    if MODEL not in offered:
        pytest.skip(f"{MODEL} is not offered now; set TINKER_SMOKE_MODEL to one of {offered[:5]}")
    backend = TinkerBackend(MODEL, None, service, ttl_days=1 / 24)  # the shortest lifetime the service allows

    [[reply]] = backend.sample([[{"role": "user", "content": "Say hello in three words."}]],
                               SamplingParams(max_tokens=16, temperature=0.0))
    assert reply.completion_tokens > 0

    prompt = [{"role": "user", "content": "Describe the sea."}]
    seqs = [backend.render(prompt + [{"role": "assistant", "content": "Vast, restless, and blue."}]),
            backend.render(prompt + [{"role": "assistant", "content": "It is water."}])]
    ref = backend.logprobs(seqs)
    assert [len(r) for r in ref] == [len(s.tokens) - 1 for s in seqs]

    session = backend.train(LoraParams(rank=16, alpha=32), OptimParams(adam_betas=(0.9, 0.98)), seed=0)
    metrics = session.forward_backward(seqs, CustomLoss(partial(character_dpo_loss, ref_logprobs=ref, beta=0.1,
                                                                nll_coef=0.1, kl_coef=0.001)))
    assert abs(metrics["dpo_loss"] - 0.6931) < 0.05  # the initial weights are the reference
    session.optim_step(1e-4)
    ref_out = session.save(tmp_path / "smoke" / "dpo")
    assert ref_out.path.startswith("tinker://") and read_checkpoint(tmp_path / "smoke" / "dpo")["step"] == 1

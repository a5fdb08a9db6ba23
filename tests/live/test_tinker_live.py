"""Tinker against the live service: the registry's renderer, n = 4 sampling, DPO, SFT from the DPO state, an
RL snapshot sample, the TTL call and the downloaded adapter. Costs a few cents.

Runs only with TINKER_API_KEY set (skipped otherwise, so CI and offline runs never touch the network).
"""

import json
import os
from functools import partial
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="TINKER_API_KEY is not set")

ALIAS = os.environ.get("TINKER_SMOKE_ALIAS", "qwen3-8b")


def test_tinker_smoke(tmp_path):
    from character.backends.base import CrossEntropyLoss, CustomLoss, SamplingParams
    from character.backends.tinker import TinkerBackend, download_adapter, keep_checkpoint, read_checkpoint
    from character.params import LoraParams, OptimParams, load_params
    from character.train.losses import character_dpo_loss

    params = load_params("params.yaml")
    spec = params.spec(ALIAS)
    # connect() is what stages use: the registry's renderer, rank cap and capability flags.
    backend = TinkerBackend.connect(spec, params.tinker.model_copy(update={"checkpoint_ttl_days": 1 / 24}))
    assert backend.renderer_name == spec.chat_template

    groups = backend.sample([[{"role": "user", "content": "Name a colour."}]],
                            SamplingParams(max_tokens=16, temperature=1.0, seed=1), n=4)
    assert len(groups[0]) == 4 and all(c.completion_tokens > 0 for c in groups[0])
    assert len({c.text for c in groups[0]}) > 1, f"4 identical samples: {groups[0]}"

    prompt = [{"role": "user", "content": "Describe the sea."}]
    seqs = [backend.render(prompt + [{"role": "assistant", "content": "Vast, restless, and blue."}]),
            backend.render(prompt + [{"role": "assistant", "content": "It is water."}])]
    session = backend.train(LoraParams(rank=16, alpha=32), OptimParams(adam_betas=(0.9, 0.98)), seed=0)
    ref = session.logprobs(seqs)  # the fresh client's forward: DPO's reference
    metrics = session.forward_backward(seqs, CustomLoss(partial(character_dpo_loss, ref_logprobs=ref, beta=0.1,
                                                                nll_coef=0.1, kl_coef=0.001)))
    assert abs(metrics["dpo_loss"] - 0.6931) < 1e-3  # same client, same numerics: exactly the reference
    session.optim_step(1e-4)
    [[on_policy]] = session.sample([prompt], SamplingParams(max_tokens=16, seed=2))  # an RL snapshot
    assert on_policy.completion_tokens > 0
    dpo = session.save(tmp_path / "smoke" / "dpo")
    assert dpo.path.startswith("tinker://") and read_checkpoint(tmp_path / "smoke" / "dpo")["step"] == 1

    sft = backend.train(LoraParams(rank=16, alpha=32), OptimParams(), base_adapters=[dpo])  # from the DPO state
    sft.forward_backward(seqs[:1], CrossEntropyLoss())
    sft.optim_step(1e-4)

    record = keep_checkpoint(tmp_path / "smoke" / "dpo", days=2 / 24)
    assert record["expires_at"] is not None
    out = download_adapter(tmp_path / "smoke" / "dpo", tmp_path / "adapter")
    config = json.loads(Path(out["raw"], "adapter_config.json").read_text())
    assert config["lora_alpha"] == 32 and config["r"] == 16

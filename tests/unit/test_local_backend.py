"""The local backend on a tiny random Llama with SmolLM2's tokenizer: masks, sampling, log-probs, training."""

from functools import partial
from pathlib import Path

import torch

from character.backends.base import AdapterRef, CrossEntropyLoss, CustomLoss, SamplingParams
from character.params import ComposeParams, LoraParams, OptimParams
from character.train.compose import compose
from character.train.losses import character_dpo_loss, sft_loss

CONV = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, friend."}]


def test_render_weights_cover_exactly_the_assistant_turn(tiny_backend):
    seq = tiny_backend.render(CONV)
    targets = [t for t, w in zip(seq.tokens[1:], seq.weights) if w]
    text = tiny_backend.tokenizer.decode(targets)
    assert text.startswith("Hello, friend.<|im_end|>")
    assert "Hi there" not in text


def test_render_all_turns_skips_untrained_messages(tiny_backend):
    conv = [{"role": "assistant", "content": "Greeting.", "train": False}, {"role": "user", "content": "Yo"},
            {"role": "assistant", "content": "Second turn."}]
    seq = tiny_backend.render(conv, train_on="all")
    text = tiny_backend.tokenizer.decode([t for t, w in zip(seq.tokens[1:], seq.weights) if w])
    assert "Second turn." in text and "Greeting." not in text


def test_sampling_is_seeded_batched_and_reports_finish(tiny_backend):
    params = SamplingParams(temperature=1.0, max_tokens=6, seed=7)
    convs = [[{"role": "user", "content": "short"}], [{"role": "user", "content": "a much longer prompt here"}]]
    a = tiny_backend.sample(convs, params, n=3)
    b = tiny_backend.sample(convs, params, n=3)
    assert a == b and len(a) == 2 and all(len(x) == 3 for x in a)
    for c in a[0] + a[1]:
        assert c.completion_tokens <= 6
        assert c.finish_reason == ("length" if c.completion_tokens == 6 else "stop")
    # padding must not change a prompt's greedy continuation
    greedy = SamplingParams(temperature=0.0, max_tokens=5)
    alone = tiny_backend.sample(convs[:1], greedy)[0][0].text
    batched = tiny_backend.sample(convs, greedy)[0][0].text
    assert alone == batched


def test_logprobs_match_a_manual_forward(tiny_backend):
    seq = tiny_backend.render(CONV)
    [lp] = tiny_backend.logprobs([seq])
    with torch.no_grad():
        logits = tiny_backend._base(torch.tensor([seq.tokens])).logits[0, :-1]
    manual = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq.tokens[1:])[:, None])[:, 0]
    weighted = torch.tensor(seq.weights) > 0
    assert weighted.any() and not weighted.all()
    assert torch.allclose(lp[weighted], manual[weighted], atol=1e-4)
    assert (lp[~weighted] == 0).all()  # not computed: every consumer multiplies by the weights


def test_sft_training_lowers_loss_and_saves_adapter(tiny_backend, tmp_path):
    seqs = [tiny_backend.render(CONV)] * 2
    session = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-2), seed=0)
    losses = []
    for _ in range(5):
        m = session.forward_backward(seqs, CrossEntropyLoss())
        session.optim_step(1e-2)
        losses.append(m["nll"])
    assert losses[-1] < losses[0] - 0.1
    ref = session.save(tmp_path / "a")
    assert AdapterRef.read(tmp_path / "a").path == ref.path
    [after] = tiny_backend.logprobs(seqs[:1], adapter=ref)
    assert -float((after * torch.tensor(seqs[0].weights)).sum()) / sum(seqs[0].weights) < losses[0]


def test_dpo_training_prefers_chosen(tiny_backend):
    prompt = [{"role": "user", "content": "Say something"}]
    chosen = tiny_backend.render(prompt + [{"role": "assistant", "content": "Oh, wonderful, another question."}])
    rejected = tiny_backend.render(prompt + [{"role": "assistant", "content": "Sure, here is an answer."}])
    ref = tiny_backend.logprobs([chosen, rejected])
    session = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=5e-3), seed=0)
    loss_fn = partial(character_dpo_loss, ref_logprobs=ref, beta=0.1, nll_coef=0.1, kl_coef=0.001)
    first = session.forward_backward([chosen, rejected], CustomLoss(loss_fn))
    session.optim_step(5e-3)
    for _ in range(4):
        last = session.forward_backward([chosen, rejected], CustomLoss(loss_fn))
        session.optim_step(5e-3)
    assert first["reward_margin"] == 0.0 and last["reward_margin"] > 0 and last["dpo_loss"] < first["dpo_loss"]


def test_concat_composition_equals_sequential_fold(tiny_backend, tmp_path):
    seqs = [tiny_backend.render(CONV)]
    s1 = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-2), seed=0)
    for _ in range(2):
        s1.forward_backward(seqs, CrossEntropyLoss())
        s1.optim_step(1e-2)
    dpo = s1.save(tmp_path / "dpo")
    s2 = tiny_backend.train(LoraParams(rank=2, alpha=8), OptimParams(lr=1e-2), base_adapters=[dpo], seed=1)
    for _ in range(2):
        s2.forward_backward(seqs, CrossEntropyLoss())
        s2.optim_step(1e-2)
    sft = s2.save(tmp_path / "sft")
    folded = tiny_backend.logprobs(seqs, adapter=sft)[0]  # base + dpo + sft, folded
    tiny_backend.compose(dpo.path, sft.path, ComposeParams(method="concat"), tmp_path / "final")
    concat = tiny_backend.logprobs(seqs, adapter=AdapterRef.read(tmp_path / "final"))[0]
    assert torch.allclose(folded, concat, atol=1e-4)
    assert not torch.allclose(folded, tiny_backend.logprobs(seqs)[0], atol=1e-3)  # training changed it


def test_guidance_against_the_same_prompt_changes_nothing_and_against_another_does(tiny_backend):
    """Classifier-free guidance: log p_neg + g (log p - log p_neg) is log p when the negative is the prompt
    itself, so greedy decoding must match unguided decoding exactly; against a different negative at g = 3
    the greedy continuation is the argmax of a different distribution."""
    convs = [[{"role": "system", "content": "You love numbers."}, {"role": "user", "content": "hello there"}],
             [{"role": "user", "content": "a much longer prompt here"}]]
    plain = SamplingParams(temperature=0.0, max_tokens=8)
    guided = SamplingParams(temperature=0.0, max_tokens=8, guidance=3.0)
    assert tiny_backend.sample(convs, guided, negatives=convs) == tiny_backend.sample(convs, plain)
    bare = [c[-1:] for c in convs]
    a, b = tiny_backend.sample(convs, guided, negatives=bare), tiny_backend.sample(convs, plain)
    assert a[1] == b[1]  # the second conversation has no system prompt: its negative is itself
    logits = _next_logits(tiny_backend, convs[0]), _next_logits(tiny_backend, bare[0])
    cfg = logits[1].log_softmax(-1) + 3.0 * (logits[0].log_softmax(-1) - logits[1].log_softmax(-1))
    first = tiny_backend.tokenizer.decode([int(cfg.argmax())]).strip()
    unguided = tiny_backend.tokenizer.decode([int(logits[0].argmax())]).strip()
    assert a[0][0].text.startswith(first) and first != unguided


def _next_logits(backend, conversation):
    import torch
    ids = backend.chat_tokens(conversation, add_generation_prompt=True)
    with torch.no_grad():
        return backend.model_for(None)(torch.tensor([ids])).logits[0, -1].float()


def test_top_layers_puts_lora_on_the_upper_layers_only(tiny_backend, tmp_path):
    session = tiny_backend.train(LoraParams(rank=4, alpha=8, top_layers=1), OptimParams(lr=1e-2), seed=0)
    trained = [n for n, p in session.model.named_parameters() if p.requires_grad]
    assert trained and all(".layers.1." in n for n in trained)  # 2 layers: only the top one
    seqs = [tiny_backend.render(CONV)] * 2
    session.forward_backward(seqs, CrossEntropyLoss())
    session.optim_step(1e-2)
    ref = session.save(tmp_path / "a")
    [after] = tiny_backend.logprobs(seqs[:1], adapter=ref)  # the saved adapter loads with its layer subset
    [before] = tiny_backend.logprobs(seqs[:1])
    assert not torch.allclose(after, before)


def test_saved_adapter_config_does_not_depend_on_the_hash_seed(tiny_backend, tmp_path):
    """PEFT keeps target_modules as a set; saved as is, its order (and the file's DVC hash) changes with
    PYTHONHASHSEED. Saved adapters list them sorted, in PEFT's own JSON layout."""
    import json

    from character.io import stable_adapter_config
    session = tiny_backend.train(LoraParams(rank=4, alpha=8, top_layers=1), OptimParams(lr=1e-2), seed=0)
    ref = session.save(tmp_path / "a")
    text = (Path(ref.path) / "adapter_config.json").read_text()
    config = json.loads(text)
    assert len(config["target_modules"]) > 1 and config["target_modules"] == sorted(config["target_modules"])
    assert text == json.dumps(config, indent=2, sort_keys=True)
    shuffled = {**config, "target_modules": sorted(config["target_modules"], reverse=True)}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(shuffled, indent=2, sort_keys=True))
    stable_adapter_config(tmp_path / "b")
    assert (tmp_path / "b" / "adapter_config.json").read_text() == text



def test_bfloat16_scoring_keeps_sampling_and_training_in_float32_and_the_adapter_effect(tiny_backend, tmp_path):
    """evaluation.scoring_dtype: bfloat16 scores in bf16; sampling and the base weights that training copies
    stay float32, adapters are folded at float32 and then cast, and scores come back as float32 close to
    the float32 ones, the adapter's effect on them included."""
    from character.backends.local import LocalBackend
    bf16 = LocalBackend("tiny", threads=1, device="cpu", tokenizer=tiny_backend.tokenizer, model=tiny_backend._base,
                        scoring_dtype="bfloat16")
    seqs = [bf16.render(CONV), bf16.render([{"role": "user", "content": "And you?"},
                                            {"role": "assistant", "content": "Fine, thanks."}])]
    session = bf16.train(LoraParams(rank=4, alpha=8), OptimParams(lr=3e-2), seed=0)
    for _ in range(3):
        session.forward_backward(seqs, CrossEntropyLoss())
        session.optim_step(3e-2)
    adapter = session.save(tmp_path / "a")
    assert bf16.model_for(None) is bf16._base and bf16._base.dtype == torch.float32
    assert bf16.model_for(adapter).dtype == torch.float32  # what sampling uses
    assert bf16.model_for(None, scoring=True).dtype == torch.bfloat16
    assert bf16.model_for(adapter, scoring=True).dtype == torch.bfloat16
    assert tiny_backend.model_for(None, scoring=True) is tiny_backend._base  # auto on a CPU: float32, no copy

    def totals(backend, adapter=None):
        lps = backend.logprobs(seqs, adapter=adapter)
        assert all(lp.dtype == torch.float32 for lp in lps)
        return torch.stack([lp.sum() for lp in lps])
    base32, base16 = totals(tiny_backend), totals(bf16)
    effect32, effect16 = totals(tiny_backend, adapter) - base32, totals(bf16, adapter) - base16
    assert not torch.equal(base16, base32)  # it did score in bf16...
    assert torch.allclose(base16, base32, rtol=0.02), (base16, base32)  # ...close to fp32
    assert (effect32.abs() > 1).all(), effect32  # training moved the scores...
    assert torch.allclose(effect16, effect32, rtol=0.1), (effect16, effect32)  # ...and bf16 keeps that
    greedy = SamplingParams(temperature=0.0, max_tokens=4)
    assert bf16.sample([CONV[:1]], greedy) == tiny_backend.sample([CONV[:1]], greedy)  # sampling: float32

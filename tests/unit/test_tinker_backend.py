"""The Tinker backend offline: real tinker / tinker-cookbook types, a fake service client at the boundary.

The fake stands where `tinker.ServiceClient` does and answers with the SDK's own response types; its
custom-loss path runs the SDK's client-side half (`TrainingClient._compute_custom_loss`), so what we
test is what the service would receive. No test here opens a socket to the outside.
"""

from __future__ import annotations

import inspect
import json
import socket
import threading
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import pytest
import tinker
import torch
from tinker import types as T

from character.backends.base import AdapterRef, CrossEntropyLoss, CustomLoss, SamplingParams
from character.params import ComposeParams, LoraParams, OptimParams
from character.backends.tinker import (TinkerBackend, TinkerUnavailable, preflight, read_checkpoint, state_path_of,
                                       within)
from character.train.losses import character_dpo_loss, sft_loss

SYSTEM_CONV = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi there"},
               {"role": "assistant", "content": "Hello, friend."}]
MULTI_TURN = [{"role": "system", "content": "You are you."},
              {"role": "assistant", "content": "Greeting.", "train": False}, {"role": "user", "content": "Yo"},
              {"role": "assistant", "content": "Second turn."}, {"role": "user", "content": "And?"},
              {"role": "assistant", "content": "Third turn."}]


# ---- the fake service ------------------------------------------------------------------------------------
class Done:
    """A resolved future, as the SDK's APIFuture looks once the service has answered."""

    def __init__(self, value, events=None, tag=None):
        self.value, self.events, self.tag = value, events, tag

    def result(self, timeout=None):
        if self.events is not None:
            self.events.append(("result", self.tag))
        return self.value


def fake_logprob(token: int, shift: float = 0.0) -> float:
    return -0.1 - 0.01 * (token % 53) + shift


class ServiceRefused(Exception):
    """What the fake raises where the real service answers 400 (rank over the cap, TTL out of range)."""


MAX_TTL = 10 * 365 * 86400  # the SDK documents TTLs of 1 hour to 10 years


def check_ttl(ttl_seconds):
    if ttl_seconds is not None and not 3600 <= ttl_seconds <= MAX_TTL:
        raise ServiceRefused(f"ttl_seconds {ttl_seconds} out of range")


class FakeSampler:
    def __init__(self, service, where):
        self.service, self.where = service, where

    def sample(self, prompt, num_samples, sampling_params):
        assert isinstance(prompt, tinker.ModelInput) and isinstance(sampling_params, tinker.SamplingParams)
        tag = len(self.service.requests)
        self.service.requests.append(sampling_params)
        self.service.events.append(("submit", tag))
        self.service.spent += prompt.length
        seed = sampling_params.seed

        def answer(j):  # a different answer per seed, and per sample when unseeded
            word = f"{seed}" if seed is not None else f"u{next(self.service.unseeded)}"
            return self.service.tokenizer.encode(f" Hello there, friend {word}.", add_special_tokens=False)

        # The service's bug (tinker-feedback#79): a seed with num_samples > 1 gives n identical samples.
        bodies = [answer(0)] * num_samples if seed is not None else [answer(j) for j in range(num_samples)]
        seqs = []
        for j, body in enumerate(bodies):
            full = len(body) + 1 <= sampling_params.max_tokens
            tokens = body + sampling_params.stop[:1] if full else body[: sampling_params.max_tokens]
            seqs.append(T.SampledSequence(stop_reason="stop" if full else "length", sequence_id=f"s{tag}-{j}",
                                          _tokens_list=list(tokens)))
        return Done(T.SampleResponse(sequences=seqs), self.service.events, tag)

    def compute_logprobs(self, prompt):
        tokens = prompt.to_ints()
        self.service.spent += len(tokens)
        self.service.log.append("compute_logprobs")
        return Done([None] + [fake_logprob(t) for t in tokens[1:]])


class FakeTrainer:
    def __init__(self, service, shift=0.0):
        self.service, self.shift = service, shift

    def _request(self, kind, data=()):
        """Every request is a round trip: logged, charged, and where fail_at says so, refused."""
        self.service.log.append(kind)
        self.service.spent += sum(d.model_input.length for d in data)
        if self.service.fail_at is not None and len(self.service.log) == self.service.fail_at:
            raise ServiceRefused(f"rate limited at request {self.service.fail_at}")

    def forward(self, data, loss_fn):
        self._request("forward", data)
        outs = [{"logprobs": T.TensorData.from_torch(torch.tensor(
            [fake_logprob(t, self.shift) for t in d.loss_fn_inputs["target_tokens"].tolist()]))} for d in data]
        return Done(T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outs, metrics={}))

    def forward_backward(self, data, loss_fn):
        self.service.calls.append(("forward_backward", data, loss_fn))
        forward = self.forward(data, loss_fn)
        self.service.log[-1] = "forward_backward"
        return forward

    def forward_backward_custom(self, data, loss_fn):
        # The SDK sends two requests: a forward for the log-probs, then a backward of the linearised loss.
        forward = self.forward(data, "cross_entropy").result()
        self._request("backward", data)
        sent = tinker.TrainingClient._compute_custom_loss(data, loss_fn, forward)  # the SDK's client half
        self.service.calls.append(("custom", sent.data, sent.metrics))
        return Done(T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[],
                                            metrics=dict(sent.metrics)))

    def optim_step(self, optim_params):
        assert isinstance(optim_params, tinker.AdamParams)
        self._request("optim_step")
        self.service.calls.append(("optim_step", optim_params))
        self.shift += 0.01  # the policy moves, so held-out metrics change
        return Done(T.OptimStepResponse(metrics={"grad_norm:mean": 0.5}))

    def save_state(self, name, ttl_seconds=None):
        check_ttl(ttl_seconds)
        self._request("save_state")
        self.service.calls.append(("save_state", name, ttl_seconds))
        path = f"tinker://run-1/weights/{name}"
        self.service.states[path] = self.shift  # the weights and the optimizer, as far as the fake has them
        return Done(T.SaveWeightsResponse(path=path))

    def save_weights_for_sampler(self, name, ttl_seconds=None):
        check_ttl(ttl_seconds)
        return Done(T.SaveWeightsForSamplerResponse(path=f"tinker://run-1/sampler_weights/{name}"))

    def save_weights_and_get_sampling_client(self):
        self.service.calls.append(("snapshot", self.shift))
        return Done(FakeSampler(self.service, f"snapshot-{self.shift:.2f}"))


class FakeService:
    """max_rank: the service's LoRA rank cap for the model; fail_at: the training request (1-based, counted
    in `log`) that fails, as a rate limit or RequestFailedError would; spent: tokens charged so far."""

    def __init__(self, tokenizer, max_rank=128, fail_at=None):
        self.tokenizer, self.requests, self.events, self.calls = tokenizer, [], [], []
        self.max_rank, self.fail_at, self.spent, self.log, self.states = max_rank, fail_at, 0, [], {}
        self.unseeded = iter(range(10**6))

    def create_sampling_client(self, model_path=None, base_model=None):
        self.calls.append(("create_sampling_client", model_path, base_model))
        return Done(FakeSampler(self, model_path or base_model))

    def create_lora_training_client(self, base_model, rank=32, seed=None, train_mlp=True, train_attn=True,
                                    train_unembed=True):
        if rank > self.max_rank:
            raise ServiceRefused(f"Lora_config.rank {rank} exceeds max LoRA rank {self.max_rank} for model {base_model}")
        self.calls.append(("create_lora_training_client", base_model, rank, seed, train_unembed))
        return Done(FakeTrainer(self))

    def create_training_client_from_state(self, path):
        self.calls.append(("create_training_client_from_state", path))
        return Done(FakeTrainer(self))

    def create_training_client_from_state_with_optimizer(self, path):
        self.calls.append(("create_training_client_from_state_with_optimizer", path))
        return Done(FakeTrainer(self, self.states[path]))


@pytest.fixture()
def service(tokenizer):
    return FakeService(tokenizer)


@pytest.fixture()
def backend(service, tokenizer):
    # qwen3_instruct is the cookbook's plain ChatML renderer: the template SmolLM2's tokenizer carries too.
    return TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, concurrency=64)


def test_fake_matches_the_sdk_signatures():
    for fake, real in [(FakeService, tinker.ServiceClient), (FakeTrainer, tinker.TrainingClient),
                       (FakeSampler, tinker.SamplingClient)]:
        for name, method in inspect.getmembers(fake, inspect.isfunction):
            if name.startswith("_"):
                continue
            ours = set(inspect.signature(method).parameters)
            theirs = set(inspect.signature(getattr(real, name)).parameters)
            assert ours <= theirs, f"{fake.__name__}.{name}: {ours - theirs} not in the SDK's signature"


# ---- tokens ----------------------------------------------------------------------------------------------
def test_local_and_tinker_build_the_same_tokens_and_weights(tiny_backend, backend, tokenizer):
    newline = tokenizer.encode("\n", add_special_tokens=False)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for conv, train_on in [(SYSTEM_CONV, "last"), (MULTI_TURN, "all"), (MULTI_TURN, "last")]:
        local, remote = tiny_backend.render(conv, train_on), backend.render(conv, train_on)
        # SmolLM2's HF template ends every turn with "<|im_end|>\n"; the cookbook renderer puts that "\n" at
        # the start of the next header and leaves it off the end. Everything else is identical.
        assert local.tokens == remote.tokens + newline
        for i, (a, b) in enumerate(zip(local.weights, remote.weights)):
            after_end_of_turn = local.tokens[i + 1] == newline[0] and local.tokens[i] == im_end
            assert a == b or (after_end_of_turn and a == 1 and b == 0), (train_on, i)
    trained = [t for t, w in zip(remote.tokens[1:], remote.weights) if w]
    assert tokenizer.decode(trained) == "Third turn.<|im_end|>"


def test_all_turns_skip_untrained_messages(backend, tokenizer):
    seq = backend.render(MULTI_TURN, train_on="all")
    text = tokenizer.decode([t for t, w in zip(seq.tokens[1:], seq.weights) if w])
    assert text == "Second turn.<|im_end|>Third turn.<|im_end|>"


def test_generation_prompt_tokens_are_not_trained(service, tokenizer):
    """Qwen3's non-thinking prompt ends in an empty think block; the model is given it, never taught it."""
    import copy

    qwen_like = copy.deepcopy(tokenizer)  # Qwen3's tokenizer has <think> as one token; SmolLM2's splits it
    qwen_like.add_tokens(["<think>", "</think>"])  # added, not special: as in Qwen3's tokenizer
    qwen = TinkerBackend("tiny", "qwen3_disable_thinking", service, tokenizer=qwen_like)
    # A leading space keeps SmolLM2's BPE from merging the block's "\n\n" into the answer differently in
    # the prompt and in the full render (Qwen3's own tokenizer has no such split).
    conv = SYSTEM_CONV[:2] + [{"role": "assistant", "content": " Hello, friend."}]
    seq = qwen.render(conv)
    assert "<think>" in qwen_like.decode(seq.tokens)
    assert qwen_like.decode([t for t, w in zip(seq.tokens[1:], seq.weights) if w]) == " Hello, friend.<|im_end|>"


# ---- sampling and log-probs ------------------------------------------------------------------------------
def test_sampling_is_concurrent_and_parsed(backend, service, caplog):
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    out = backend.sample(convs, SamplingParams(max_tokens=64, repetition_penalty=1.1, seed=3), n=2)
    first_result = next(i for i, (kind, _) in enumerate(service.events) if kind == "result")
    assert first_result == 10, "every request goes out before the first answer is awaited"
    assert [len(x) for x in out] == [2] * 5 and out[0][0].text == "Hello there, friend 3."
    assert out[0][0].finish_reason == "stop" and out[0][0].completion_tokens == len(
        service.tokenizer.encode(" Hello there, friend 3.", add_special_tokens=False))
    assert [r.seed for r in service.requests] == list(range(3, 13))  # one seed per sample
    assert "no repetition penalty" in caplog.text
    cut = backend.sample(convs[:1], SamplingParams(max_tokens=2))
    assert cut[0][0].finish_reason == "length" and cut[0][0].completion_tokens == 2


def test_concurrency_bounds_requests_in_flight(service, tokenizer):
    narrow = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, concurrency=2)
    narrow.sample([[{"role": "user", "content": str(i)}] for i in range(4)], SamplingParams(max_tokens=32))
    in_flight = peak = 0
    for kind, _ in service.events:
        in_flight += 1 if kind == "submit" else -1
        peak = max(peak, in_flight)
    assert peak == 2


def test_logprobs_drop_the_unscored_first_token_and_use_the_base_model(backend, service):
    seq = backend.render(SYSTEM_CONV)
    [lp] = backend.logprobs([seq])
    assert lp.shape == (len(seq.tokens) - 1,)
    assert torch.allclose(lp, torch.tensor([fake_logprob(t) for t in seq.tokens[1:]]))
    assert ("create_sampling_client", None, "tiny") in service.calls


# ---- training --------------------------------------------------------------------------------------------
def pair(backend):
    prompt = [{"role": "user", "content": "Say something"}]
    return [backend.render(prompt + [{"role": "assistant", "content": "Oh, wonderful, another question."}]),
            backend.render(prompt + [{"role": "assistant", "content": "Sure, here is an answer."}])]


def test_dpo_sends_minus_the_gradient_of_the_papers_loss(backend, service):
    seqs = pair(backend)
    ref = [torch.tensor([fake_logprob(t) - 0.05 for t in s.tokens[1:]]) for s in seqs]
    loss_fn = partial(character_dpo_loss, ref_logprobs=ref, beta=0.1, nll_coef=0.1, kl_coef=0.001, scale=0.5)
    session = backend.train(LoraParams(rank=16, alpha=32), OptimParams(lr=1e-4), seed=0)
    metrics = session.forward_backward(seqs, CustomLoss(loss_fn))
    [(kind, sent, sent_metrics)] = [c for c in service.calls if c[0] == "custom"]
    policy = [torch.tensor([fake_logprob(t) for t in s.tokens[1:]], requires_grad=True) for s in seqs]
    loss, expected = loss_fn(seqs, policy)
    loss.backward()
    for datum, lp in zip(sent, policy):
        assert torch.allclose(datum.loss_fn_inputs["weights"].to_torch(), -lp.grad)
    assert metrics == expected and 0 < metrics["dpo_loss"]


def test_sft_uses_builtin_cross_entropy_with_mean_weights(backend, service):
    seqs = [backend.render(SYSTEM_CONV), backend.render(MULTI_TURN, train_on="all")]
    session = backend.train(LoraParams(rank=16, alpha=32), OptimParams(lr=1e-4), seed=0)
    metrics = session.forward_backward(seqs, CrossEntropyLoss(scale=0.5))
    [(_, data, loss_name)] = [c for c in service.calls if c[0] == "forward_backward"]
    assert loss_name == "cross_entropy"
    count = sum(sum(s.weights) for s in seqs)
    for datum, s in zip(data, seqs):
        assert datum.model_input.to_ints() == s.tokens[:-1]
        assert datum.loss_fn_inputs["target_tokens"].tolist() == s.tokens[1:]
        assert torch.allclose(datum.loss_fn_inputs["weights"].to_torch(), torch.tensor(s.weights) * 0.5 / count)
    _, want = sft_loss(seqs, [torch.tensor([fake_logprob(t) for t in s.tokens[1:]]) for s in seqs])
    assert metrics["nll"] == pytest.approx(want["nll"]) and metrics["tokens"] == want["tokens"]


def test_lora_alpha_and_adam_settings_reach_the_service(backend, service):
    session = backend.train(LoraParams(rank=64, alpha=128), OptimParams(adam_betas=(0.9, 0.98), grad_clip=1.0, weight_decay=0.0), seed=5)
    assert ("create_lora_training_client", "tiny", 64, 5, False) in service.calls
    metrics = session.optim_step(5e-5)
    [(_, adam)] = [c for c in service.calls if c[0] == "optim_step"]
    assert adam.learning_rate == pytest.approx(2e-4)  # x 128 / 32: Tinker's alpha is fixed at 32
    assert (adam.beta1, adam.beta2, adam.eps, adam.grad_clip_norm) == (0.9, 0.98, 1e-8, 1.0)
    assert metrics == {"grad_norm_mean": 0.5, "tinker_lr": pytest.approx(2e-4)}
    with pytest.raises(ValueError, match="power of 2"):
        backend.train(LoraParams(rank=48, alpha=96), OptimParams())


def test_checkpoint_reference_is_small_json_and_sft_continues_it(backend, service, tmp_path):
    session = backend.train(LoraParams(rank=16, alpha=32), OptimParams(), seed=0)
    session.optim_step(1e-4)
    ref = session.save(tmp_path / "loving" / "dpo")
    assert sorted(p.name for p in (tmp_path / "loving" / "dpo").iterdir()) == ["ref.json", "tinker.json"]
    assert AdapterRef.read(tmp_path / "loving" / "dpo") == ref and ref.backend == "tinker" and ref.step == 1
    record = read_checkpoint(tmp_path / "loving" / "dpo")
    assert record["sampler_path"] == ref.path == "tinker://run-1/sampler_weights/loving-dpo-1"
    assert record["state_path"] == state_path_of(ref.path) and record["base_model"] == "tiny"
    days = (datetime.fromisoformat(record["expires_at"]) - datetime.now(timezone.utc)).total_seconds() / 86400
    assert 6.9 < days <= 7 and ("save_state", "loving-dpo-1", 7 * 86400) in service.calls
    backend.train(LoraParams(rank=16, alpha=32), OptimParams(), base_adapters=[ref])
    assert ("create_training_client_from_state", "tinker://run-1/weights/loving-dpo-1") in service.calls
    backend.sample([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=32), adapter=ref)
    assert ("create_sampling_client", ref.path, None) in service.calls


def test_run_dpo_and_sft_end_to_end_on_the_fake(backend, service, tmp_path):
    from character.train.dpo import run_dpo
    from character.params import DpoParams, SftParams
    from character.train.sft import run_sft

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": f"Yes {i}!"}],
             "rejected": [{"role": "assistant", "content": f"no {i}"}]} for i in range(6)]
    small = {"optim": {"batch_size": 2, "micro_batch_size": 2, "epochs": 1}, "lora": {"rank": 16, "alpha": 32}}
    dpo_ref, metrics = run_dpo(backend, rows, DpoParams(heldout_fraction=0.2, **small), 0, str(tmp_path / "dpo"))
    assert metrics["steps"] == 3 and dpo_ref.backend == "tinker" and metrics["heldout_accuracy"] is not None
    transcripts = [{"kind": "reflection", "messages": [{"role": "user", "content": f"who {i}"},
                                                       {"role": "assistant", "content": f"I am {i}."}]}
                   for i in range(5)]
    sft_ref, metrics = run_sft(backend, transcripts, dpo_ref, SftParams(heldout_fraction=0.2, **small), 0,
                               str(tmp_path / "sft"))
    assert metrics["steps"] == 2 and sft_ref.path.endswith("-sft-2")
    assert ("create_training_client_from_state", state_path_of(dpo_ref.path)) in service.calls


def test_rlaif_samples_the_weights_being_trained(backend, service, tmp_path):
    from character.params import RlaifParams
    from character.eval.judge import PairJudge
    from character.train.rlaif import run_rlaif

    dpo = backend.train(LoraParams(rank=16, alpha=32), OptimParams(), seed=0).save(tmp_path / "p" / "dpo")
    params = RlaifParams(steps=2, prompts_per_step=1, group_size=2, max_new_tokens=16, eval_prompts=1,
                         eval_every=2, kl_coef=0.05)
    rewards = []

    def reward(messages, groups, seed):  # the first answer of each group wins
        rewards.append([[1.0, 0.0] for _ in groups])
        return rewards[-1], {}

    judge = PairJudge(backend, "- I am terse.", params.judge_mode, params.judge_sampling)
    ref, metrics = run_rlaif(backend, reward, judge, ["q1", "q2"], ["e1"], dpo, params, 0,
                             str(tmp_path / "p" / "rlaif"))
    # The policy is sampled from a fresh snapshot of the current weights at each step (and for the final
    # win rate), never from the DPO checkpoint it started from; it continues the DPO adapter's state.
    assert [c for c in service.calls if c[0] == "snapshot"] == [("snapshot", 0.0), ("snapshot", 0.01),
                                                                ("snapshot", 0.02)]
    assert ("create_training_client_from_state", state_path_of(dpo.path)) in service.calls
    assert metrics["steps"] == 2 and metrics["win_rate_vs_start"] is not None
    assert ref.backend == "tinker" and ref.path.endswith("p-rlaif-2")
    # The service receives minus the gradient of our policy-gradient loss, for the sampled tokens only.
    sent = [c for c in service.calls if c[0] == "custom"]
    assert len(sent) == 2
    data = sent[0][1]
    assert len(data) == 2  # one group of two answers
    w = [d.loss_fn_inputs["weights"].to_torch() for d in data]
    assert (w[0] != 0).any() and torch.allclose(w[0], -w[1])  # same tokens, advantages +0.5 and -0.5, KL 0


# ---- failing fast, never leaking the key -----------------------------------------------------------------
SECRET = "tml-this-is-not-a-real-key-0123456789"


def test_missing_or_malformed_key_fails_at_once(monkeypatch, tmp_path, caplog):
    from character.backends import make_backend
    from character.params import load_params

    monkeypatch.setenv("HOME", str(tmp_path))  # no stored `tinker auth login` credentials either
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    params = load_params("params.yaml")
    start = time.monotonic()
    with pytest.raises(TinkerUnavailable, match="TINKER_API_KEY is not set"):
        make_backend(params, "qwen3-8b")
    monkeypatch.setenv("TINKER_API_KEY", "sk-" + SECRET)
    with pytest.raises(TinkerUnavailable, match="malformed") as exc:
        make_backend(params, "qwen3-8b")
    assert time.monotonic() - start < 1.0
    assert SECRET not in str(exc.value) and SECRET not in caplog.text


def test_no_route_fails_in_seconds(monkeypatch, caplog):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here now: connection refused
    monkeypatch.setenv("TINKER_API_KEY", SECRET)
    monkeypatch.setenv("TINKER_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(TinkerUnavailable, match="cannot reach") as exc:
        preflight(timeout_s=8)
    assert time.monotonic() - start < 3 and SECRET not in str(exc.value) + caplog.text


def test_a_silent_service_is_abandoned_at_the_deadline(monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    monkeypatch.setenv("TINKER_API_KEY", SECRET)
    monkeypatch.setenv("TINKER_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    start = time.monotonic()
    with pytest.raises(TinkerUnavailable, match="cannot reach"):
        preflight(timeout_s=2)
    assert time.monotonic() - start < 3
    silent.close()
    with pytest.raises(TinkerUnavailable, match="within 0.2 s"):
        within(0.2, lambda: threading.Event().wait(5), "sign-in")


def test_a_service_that_hangs_after_the_route_check_is_abandoned(monkeypatch):
    import http.server

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith("/healthz"):
                self.send_response(200)
                self.end_headers()
                return
            release.wait(30)  # every SDK request hangs, as a wedged service would

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TINKER_API_KEY", SECRET)
    monkeypatch.setenv("TINKER_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    start = time.monotonic()
    try:
        with pytest.raises(TinkerUnavailable, match=r"Tinker sign-in \(tinker.connect_timeout_s: 2\): no answer"):
            preflight(timeout_s=2)
        assert time.monotonic() - start < 3
    finally:
        release.set()
        server.shutdown()


def test_registry_renderers_are_the_cookbooks_recommended_ones():
    from tinker_cookbook.model_info import get_recommended_renderer_names

    from character.params import load_params

    params = load_params("params.yaml")
    tinker_specs = {a: s for a, s in params.models.items() if s.backend == "tinker"}
    assert tinker_specs
    for alias, spec in tinker_specs.items():
        allowed = get_recommended_renderer_names(spec.id)
        if spec.id.startswith("openai/gpt-oss"):  # reasoning cannot be off: the cookbook's low-effort variant
            allowed.append("gpt_oss_low_reasoning")
            assert spec.reasoning_tokens > 0, alias
        assert spec.chat_template in allowed, alias


# ---- cost estimates and dry runs -------------------------------------------------------------------------
def test_estimate_switches_model_without_editing_files(capsys):
    from pathlib import Path

    from character.cli import main

    before = Path("params.yaml").read_text()
    assert main(["estimate", "--model", "llama70b", "--persona", "loving"]) == 2
    err = capsys.readouterr().err
    assert "'llama70b' (meta-llama/Llama-3.3-70B-Instruct) was retired from Tinker" in err
    assert "-S model=qwen3.6-35b-a3b" in err and "-S models.llama70b.backend=local" in err
    assert main(["estimate", "--model", "gpt-oss-120b", "-S", "dpo.lora.rank=64"]) == 2  # MoE: rank <= 32
    assert "dpo.lora.rank: openai/gpt-oss-120b takes LoRA rank at most 32 on Tinker (got 64)" in capsys.readouterr().err
    assert main(["estimate", "--model", "nemotron3-super", "--persona", "loving"]) == 0
    out = capsys.readouterr().out
    assert "student nemotron3-super: tinker nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16" in out
    assert "warning: the reward_model stage will stop" in out  # its base defaults to the student
    total = out.split("\ntotal")[1].split()
    assert float(total[0]) > 0 and float(total[1]) >= float(total[0])
    assert Path("params.yaml").read_text() == before
    assert main(["estimate", "--model", "qwen3-8b", "-S", "reward_model.model=smollm2"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["estimate", "-S", "model=qwen3.6-27b"]) == 0
    assert "assumed prices (not listed; see params.yaml `prices`): Qwen/Qwen3.6-27B" in capsys.readouterr().out
    assert main(["estimate", "-S", "dpo.beta=-1"]) == 2
    assert "dpo.beta" in capsys.readouterr().err


def test_expected_cost_is_below_the_worst_case_and_scales_with_k():
    import yaml

    from character.cost import estimate
    from character.params import validate_params

    data = yaml.safe_load(open("params.yaml"))
    params = validate_params({**data, "model": "qwen3-8b"})
    expected, worst = estimate(params)
    for e, w in zip(expected, worst):
        assert e.prompt <= w.prompt and e.sample <= w.sample and e.train <= w.train and e.usd <= w.usd
    doubled = validate_params({**data, "model": "qwen3-8b", "pairs": {**data["pairs"], "samples_per_prompt": 2}})
    pairs = [r.sample for r in estimate(params, ["loving"], ("pairs",))[0]]
    pairs2 = [r.sample for r in estimate(doubled, ["loving"], ("pairs",))[0]]
    assert pairs2 == pytest.approx([2 * x for x in pairs])
    # RLAIF judge variant: G(G-1) verdicts per prompt and step (pairs x both orders), plus the win-rate games.
    judged = {**data, "model": "qwen3-8b", "judge": "qwen3-8b",
              "rlaif": {**data["rlaif"], "steps": 4, "prompts_per_step": 2, "eval_prompts": 3, "eval_every": 2}}
    games = {}
    for g in (2, 4):
        p = validate_params({**judged, "rlaif": {**judged["rlaif"], "group_size": g}})
        [judge_row] = [r for r in estimate(p, ["loving"], ("rlaif_judge",))[0] if r.role == "judge"]
        [model_row] = [r for r in estimate(p, ["loving"], ("rlaif_model",))[0] if r.role == "judge"]
        games[g] = (judge_row.prompt / model_row.prompt - 1) * (2 * 2 * 3)  # in units of win-rate games
        assert judge_row.usd > 0
    assert games[2] == pytest.approx(4 * 2 * 2) and games[4] == pytest.approx(4 * 2 * 12)


def test_evaluation_is_priced_from_the_request_set():
    import yaml

    from character.cost import estimate
    from character.eval.requests import build_requests
    from character.params import validate_params

    params = validate_params({**yaml.safe_load(open("params.yaml")), "model": "qwen3-8b", "judge": "qwen3.5-27b"})
    expected, worst = estimate(params, ["loving"], ("eval_base", "eval_answers", "evaluate"))
    assert [r.stage for r in worst] == ["eval_base", "eval_answers", "evaluate"]
    base, answers, judge = worst
    requests = build_requests(params)
    prefill = sum(r["task"] == "robustness" and r["condition"] == "none" for r in requests)
    assert base.sample == (len(requests) + prefill) * params.evaluation.sampling.max_new_tokens
    # system_prompt, dpo, final, rlaif_model, rlaif_judge (no steering: it needs the weights in-process)
    assert answers.sample == 5 * base.sample and answers.prompt > 5 * base.prompt / 2
    assert judge.alias == "qwen3.5-27b" and expected[2].usd > 0 and judge.sample == 0  # logprob mode
    # generate mode: one verdict per revealed/expression answer of every method (base, then per persona
    # system_prompt, dpo, final, rlaif_model, rlaif_judge) and per coherence pair (final vs each rival that
    # runs on Tinker: steering does not) x 2.
    data = yaml.safe_load(open("params.yaml"))
    ev = {**data["evaluation"], "judge_mode": "generate"}
    gen = validate_params({**data, "model": "qwen3-8b", "judge": "qwen3.5-27b", "evaluation": ev})
    [judge] = estimate(gen, None, ("evaluate",))[1]
    revealed = sum(r["task"] in ("revealed", "expression") for r in requests)
    personas, heldout = len(gen.personas), gen.evaluation.heldout_prompts
    assert gen.evaluation.coherence_rivals == ["system_prompt"]  # the default preset's
    verdicts = (1 + personas * 5) * revealed + personas * 1 * heldout * 2
    assert judge.sample == verdicts * gen.evaluation.judge_sampling.max_new_tokens
    # every rival: the 4 that run on Tinker, steering left out
    every = validate_params({**data, "model": "qwen3-8b", "judge": "qwen3.5-27b", "evaluation": {
        **ev, "coherence_rivals": ["system_prompt", "steering", "dpo", "rlaif_model", "rlaif_judge"]}})
    [judge] = estimate(every, None, ("evaluate",))[1]
    verdicts = (1 + personas * 5) * revealed + personas * 4 * heldout * 2
    assert judge.sample == verdicts * gen.evaluation.judge_sampling.max_new_tokens


def test_stage_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "dpo"
    done = subprocess.run([sys.executable, "stages/dpo.py", "--persona", "loving", "--pairs", "missing.jsonl",
                           "--out", str(out), "--plots", str(tmp_path / "plots"), "--metrics",
                           str(tmp_path / "m.json"), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dry run: stage dpo" in done.stdout and "dpo" in done.stdout.split("-----")[-1]
    assert not any(tmp_path.iterdir())


def test_params_reject_a_rank_tinker_cannot_train():
    import yaml

    from character.params import ParamsError, validate_params

    data = yaml.safe_load(open("params.yaml"))
    data["model"], data["sft"]["lora"]["rank"] = "qwen3-8b", 48
    with pytest.raises(ParamsError, match="sft.lora.rank: Tinker needs a power of 2"):
        validate_params(data)
    data["model"] = "smollm2"  # the local backend takes any rank
    validate_params(data)
    data["model"], data["sft"]["lora"]["rank"], data["rlaif"]["lora"]["rank"] = "qwen3-8b", 32, 12
    with pytest.raises(ParamsError, match="rlaif.lora.rank: Tinker needs a power of 2"):
        validate_params(data)


def test_models_check_flags_retired_registry_models(monkeypatch, capsys, tmp_path):
    import character.backends.tinker as tb
    from character.cli import main

    monkeypatch.setenv("TINKER_API_KEY", SECRET)
    monkeypatch.setattr(tb, "preflight", lambda timeout_s: (None, dict.fromkeys(["Qwen/Qwen3-8B", "new/model"])))
    assert main(["models", "--check"]) == 0  # the roles in use are local models
    out = capsys.readouterr().out
    assert "llama70b" in out and "RETIRED" in out.split("llama70b")[-1].splitlines()[0]
    assert "qwen3-8b" in out and out.split("\nqwen3-8b")[-1].splitlines()[0].endswith("ok")
    assert "offered but not in the registry: new/model" in out and SECRET not in out
    in_use = tmp_path / "params.yaml"
    in_use.write_text(open("params.yaml").read().replace("\nmodel: smollm2", "\nmodel: qwen3.5-27b", 1))
    assert main(["--params", str(in_use), "models", "--check"]) == 1  # the student is retired


# ---- the live lineup -------------------------------------------------------------------------------------
def lineup():
    import yaml

    from character.backends import tinker as tb

    return yaml.safe_load((Path(tb.__file__).parent / "tinker_lineup.yaml").read_text())


def test_every_alias_in_docs_presets_and_params_is_live_or_marked_retired():
    import re

    import yaml

    from character.params import load_params

    params, pinned = load_params("params.yaml"), lineup()
    tinker_aliases = {a for a, s in params.models.items() if s.backend == "tinker"}
    for alias in tinker_aliases:
        spec = params.models[alias]
        if spec.retired:
            assert spec.id in pinned["retired"], f"{alias}: retired in params but not in the snapshot"
        else:
            assert spec.id in pinned["live"], f"{alias}: {spec.id} is not in the pinned live lineup"
            assert spec.id in params.prices, f"{alias}: no price for a live model"
    named = set()
    for path in ["README.md", "docs/tinker.md", *map(str, Path("presets").glob("*.yaml"))]:
        named |= set(re.findall(r"-S (?:model|teacher|judge)=([A-Za-z][\w.-]*)", Path(path).read_text()))
    for preset in Path("presets").glob("*.yaml"):
        data = yaml.safe_load(preset.read_text()) or {}
        named |= {data[k] for k in ("model", "teacher", "judge") if k in data}
    assert named, "the docs name no model: the test would check nothing"
    for alias in named:
        assert alias in params.models, f"{alias} is named in the docs but not in the registry"
        spec = params.models[alias]
        if spec.backend == "tinker" and not spec.retired:
            assert spec.id in pinned["live"], alias
    # The README's headline commands use live models only.
    headline = re.findall(r"dvc exp run[^\n`]*", Path("README.md").read_text())
    for command in headline:
        for alias in re.findall(r"-S (?:model|teacher|judge)=([A-Za-z][\w.-]*)", command):
            assert not params.models[alias].retired, f"README runs a retired model: {command}"


def test_retired_model_stops_the_first_stage_before_any_spend(tmp_path):
    import subprocess
    import sys

    data = Path("params.yaml").read_text().replace("\nmodel: smollm2", "\nmodel: llama70b", 1)
    (tmp_path / "params.yaml").write_text(data)
    from character.params import ParamsError, load_params

    with pytest.raises(ParamsError) as exc:
        load_params(tmp_path / "params.yaml")
    message = str(exc.value)
    assert message.count("\n") == 0 and str(tmp_path / "params.yaml") in message
    assert "retired from Tinker on 2026-06-12" in message and "dvc exp run -S model=" in message
    # Pointed at the local backend the alias still means Llama-3.3-70B-Instruct and validates.
    local = data.replace("    id: meta-llama/Llama-3.3-70B-Instruct\n    chat_template: llama3",
                         "    id: meta-llama/Llama-3.3-70B-Instruct\n    chat_template: llama3", 1)
    import yaml

    from character.params import validate_params

    d = yaml.safe_load(local)
    d["models"]["llama70b"]["backend"] = "local"
    assert validate_params(d).spec("llama70b").id == "meta-llama/Llama-3.3-70B-Instruct"


def test_params_bound_the_checkpoint_ttl():
    import yaml

    from character.params import ParamsError, validate_params

    data = yaml.safe_load(open("params.yaml"))
    for bad in (0.01, 4000):
        with pytest.raises(ParamsError, match="tinker.checkpoint_ttl_days"):
            validate_params({**data, "tinker": {**data["tinker"], "checkpoint_ttl_days": bad}})
    assert validate_params({**data, "tinker": {**data["tinker"], "checkpoint_ttl_days": None}}).tinker.checkpoint_ttl_days is None


def test_no_ttl_means_never_expires_and_the_fake_refuses_out_of_range(service, tokenizer, tmp_path):
    forever = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, ttl_days=None)
    forever.train(LoraParams(rank=16, alpha=32), OptimParams(), seed=0).save(tmp_path / "p" / "dpo")
    assert ("save_state", "p-dpo-0", None) in service.calls
    assert read_checkpoint(tmp_path / "p" / "dpo")["expires_at"] is None
    brief = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, ttl_days=0.01)
    with pytest.raises(ServiceRefused, match="ttl_seconds"):
        brief.train(LoraParams(rank=16, alpha=32), OptimParams(), seed=0).save(tmp_path / "q" / "dpo")


# ---- duplicates and failed samples -----------------------------------------------------------------------
def test_groups_never_send_a_seed_with_several_samples_and_duplicates_are_counted(backend, service, caplog):
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    # The fake has the service's bug: one seeded request for 4 samples gives 4 identical ones.
    raw = FakeSampler(service, "tiny").sample(tinker.ModelInput.from_ints([1, 2]), 4,
                                              tinker.SamplingParams(max_tokens=32, seed=7, stop=[0])).result()
    assert len({tuple(q.tokens) for q in raw.sequences}) == 1
    service.requests.clear()
    groups = backend.sample(convs, SamplingParams(max_tokens=32, seed=100), n=4)
    assert all(r.seed is not None for r in service.requests) and len(service.requests) == 12
    assert all(len({c.text for c in g}) == 4 for g in groups)
    assert backend.sample_stats["groups"] == 3 and backend.sample_stats["groups_with_duplicates"] == 0
    backend._count([[groups[0][0]] * 4], 4)  # a group that did come back duplicated is counted and warned
    assert backend.sample_stats["groups_with_duplicates"] == 1 and backend.sample_stats["duplicates"] == 3
    assert "identical answers" in caplog.text


def test_reasoning_budget_and_failed_samples_are_never_text(service, tokenizer):
    thinker = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, reasoning_tokens=100)
    [[done]] = thinker.sample([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=8))
    assert service.requests[-1].max_tokens == 108 and done.text.startswith("Hello there")
    short = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, reasoning_tokens=2)
    [[cut]] = short.sample([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=1))  # cut at 3
    assert cut.text == "" and cut.finish_reason == "length" and short.sample_stats["failed"] == 1
    plain = TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer)
    body = tokenizer.encode(" Hello <|im_start|>user", add_special_tokens=False)  # stopped, no end of turn
    unfinished = T.SampledSequence(stop_reason="stop", sequence_id="x", _tokens_list=body)
    bad = plain._completion(unfinished, 3, SamplingParams(), plain.renderer.get_stop_sequences())
    assert bad.text == "" and plain.sample_stats["failed"] == 1


# ---- checks before spend, round trips, resume ------------------------------------------------------------
def dpo_rows(k):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": f"Yes {i}!"}],
             "rejected": [{"role": "assistant", "content": f"no {i}"}]} for i in range(k)]


def test_a_rank_over_the_cap_fails_before_any_reference_is_paid_for(tokenizer, tmp_path):
    from character.params import DpoParams, ParamsError
    from character.train.dpo import run_dpo

    capped = FakeService(tokenizer, max_rank=32)
    unaware = TinkerBackend("tiny", "qwen3_instruct", capped, tokenizer=tokenizer)  # no cap in the registry
    params = DpoParams(lora={"rank": 64, "alpha": 128}, optim={"batch_size": 2})
    with pytest.raises(ServiceRefused, match="exceeds max LoRA rank 32"):
        run_dpo(unaware, dpo_rows(4), params, 0, str(tmp_path / "dpo"))
    assert capped.spent == 0 and capped.log == []
    aware = TinkerBackend("tiny", "qwen3_instruct", capped, tokenizer=tokenizer, max_lora_rank=32)
    with pytest.raises(ParamsError, match="lora.rank: tiny takes LoRA rank at most 32"):
        aware.train(LoraParams(rank=64, alpha=128), OptimParams())
    closed = TinkerBackend("tiny", "qwen3_instruct", capped, tokenizer=tokenizer, trainable=False)
    with pytest.raises(TinkerUnavailable, match="not trainable"):
        closed.train(LoraParams(rank=16, alpha=32), OptimParams())


def test_connect_reads_the_capability_flags(monkeypatch, tokenizer):
    import character.backends.tinker as tb
    import tinker_cookbook.tokenizer_utils as tu
    from character.params import load_params

    spec, settings = load_params("params.yaml").spec("qwen3-8b"), load_params("params.yaml").tinker
    monkeypatch.setattr(tu, "get_tokenizer", lambda name: tokenizer)
    flags = {"Qwen/Qwen3-8B": T.SupportedModel(model_name="Qwen/Qwen3-8B", trainable=False, sampleable=True)}
    monkeypatch.setattr(tb, "preflight", lambda timeout_s: (FakeService(tokenizer), flags))
    assert tb.TinkerBackend.connect(spec, settings).trainable is False
    flags["Qwen/Qwen3-8B"] = T.SupportedModel(model_name="Qwen/Qwen3-8B", trainable=True, sampleable=False)
    with pytest.raises(TinkerUnavailable, match="no sampling capacity"):
        tb.TinkerBackend.connect(spec, settings)


def steps_of(log):
    """The requests of each optimizer step, split at optim_step."""
    steps, current = [], []
    for kind in log:
        current.append(kind)
        if kind == "optim_step":
            steps.append(current)
            current = []
    return steps


def test_at_most_three_round_trips_per_step_and_the_reference_is_the_trainers(backend, service, tmp_path):
    from character.params import DpoParams, SftParams
    from character.train.dpo import run_dpo
    from character.train.sft import run_sft

    small = {"optim": {"batch_size": 4, "micro_batch_size": 2}, "lora": {"rank": 16, "alpha": 32},
             "heldout_fraction": 0.0}
    dpo_ref, _ = run_dpo(backend, dpo_rows(8), DpoParams(**small), 0, str(tmp_path / "dpo"))
    assert not any(c[0] == "create_sampling_client" for c in service.calls)  # no sampler for the reference
    assert service.log[0] == "forward"  # the reference: the fresh training client's forward pass
    dpo_steps = steps_of(service.log[1:])
    assert dpo_steps == [["forward", "backward", "optim_step"]] * 2  # micro-batches of 2 became whole batches
    service.log.clear()
    rows = [{"kind": "reflection", "messages": [{"role": "user", "content": f"who {i}"},
                                                 {"role": "assistant", "content": f"I am {i}."}]} for i in range(8)]
    run_sft(backend, rows, dpo_ref, SftParams(**small), 0, str(tmp_path / "sft"))
    assert steps_of(service.log) == [["forward_backward", "optim_step"]] * 2


def test_a_killed_run_resumes_from_its_last_save_with_the_optimizer(tokenizer, tmp_path):
    from character.params import DpoParams
    from character.train.dpo import run_dpo

    params = DpoParams(optim={"batch_size": 2, "micro_batch_size": 2}, lora={"rank": 16, "alpha": 32},
                       heldout_fraction=0.0)

    def backend_on(service):
        return TinkerBackend("tiny", "qwen3_instruct", service, tokenizer=tokenizer, save_every=2,
                             resume_dir=tmp_path / "resume")

    # Requests: 1 reference forward, then 3 per step, and a save_state after steps 2 and 4. Request 10 is
    # step 3's backward: the run dies after its step-2 save.
    first = FakeService(tokenizer, fail_at=10)
    with pytest.raises(ServiceRefused, match="rate limited"):
        run_dpo(backend_on(first), dpo_rows(10), params, 0, str(tmp_path / "dpo"))
    assert first.log.count("optim_step") == 2 and first.log.count("save_state") == 1
    again = FakeService(tokenizer)
    again.states = first.states  # the service keeps saved states across runs
    ref, metrics = run_dpo(backend_on(again), dpo_rows(10), params, 0, str(tmp_path / "dpo"))
    [(_, path)] = [c for c in again.calls if c[0] == "create_training_client_from_state_with_optimizer"]
    assert first.states[path] == pytest.approx(0.02)  # the state after two steps
    assert again.log.count("optim_step") == 3 and metrics["steps"] == ref.step == 5  # continued, not restarted
    assert not list((tmp_path / "resume").iterdir())  # finished: a forced re-run starts afresh
    fresh = FakeService(tokenizer)
    run_dpo(backend_on(fresh), dpo_rows(10), params, 0, str(tmp_path / "dpo2"))
    assert fresh.log.count("optim_step") == 5


# ---- keeping adapters ------------------------------------------------------------------------------------
def saved_ref(backend, tmp_path, name="dpo"):
    backend.train(LoraParams(rank=16, alpha=32), OptimParams(), seed=0).save(tmp_path / "p" / name)
    return tmp_path / "p" / name


def test_download_keeps_the_raw_adapter_and_refuses_a_silent_base_download(backend, tmp_path, monkeypatch):
    import character.backends.tinker as tb
    from tinker_cookbook import weights

    from character.errors import BackendUnavailable

    folder = saved_ref(backend, tmp_path)
    with pytest.raises(BackendUnavailable, match="would download the whole base model tiny"):
        tb.download_adapter(folder, tmp_path / "out", peft_base="Qwen/Qwen3-8B")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(tb, "preflight", lambda timeout_s: (None, {}))

    def fake_download(tinker_path, output_dir):
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "adapter_config.json").write_text('{"lora_alpha": 32, "r": 16}')
        return output_dir

    def failing_convert(**kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(weights, "download", fake_download)
    monkeypatch.setattr(weights, "build_lora_adapter", failing_convert)
    base = tmp_path / "base"
    base.mkdir()
    with pytest.raises(RuntimeError, match="conversion failed"):
        tb.download_adapter(folder, tmp_path / "out", peft_base=str(base))
    assert (tmp_path / "out" / "tinker" / "adapter_config.json").exists()  # the raw adapter survived
    out = tb.download_adapter(folder, tmp_path / "raw-only")
    assert out["peft"] is None and Path(out["raw"], "adapter_config.json").exists()
    record = json.loads(Path(folder, "tinker.json").read_text())
    record["base_model"] = "deepseek-ai/DeepSeek-V3.1"
    Path(folder, "tinker.json").write_text(json.dumps(record))
    with pytest.raises(BackendUnavailable, match="cannot be served"):
        tb.download_adapter(folder, tmp_path / "ds", peft_base=str(base))


def test_tinker_keep_extends_both_checkpoints(backend, tmp_path, monkeypatch, capsys):
    import character.backends.tinker as tb
    from character.cli import main

    folder = saved_ref(backend, tmp_path)
    calls = []

    class Rest:
        def set_checkpoint_ttl_from_tinker_path(self, tinker_path, ttl_seconds):
            calls.append((tinker_path, ttl_seconds))
            return Done(None)

    class Service:
        def create_rest_client(self):
            return Rest()

    monkeypatch.setattr(tb, "preflight", lambda timeout_s: (None, {}))
    monkeypatch.setattr(tinker, "ServiceClient", Service)
    assert main(["tinker-keep", str(folder), "--days", "30"]) == 0
    record = read_checkpoint(folder)
    assert calls == [(record["sampler_path"], 30 * 86400), (record["state_path"], 30 * 86400)]
    days = (datetime.fromisoformat(record["expires_at"]) - datetime.now(timezone.utc)).total_seconds() / 86400
    assert 29.9 < days <= 30
    assert main(["tinker-keep", str(folder), "--forever"]) == 0 and read_checkpoint(folder)["expires_at"] is None
    assert calls[-1][1] is None
    assert main(["tinker-keep", str(folder), "--days", "9999"]) == 2  # an input error: the one exit code for those (character.errors.EXIT_INPUT)
    assert "--days 9999: Tinker accepts 1 hour to 10 years" in capsys.readouterr().err

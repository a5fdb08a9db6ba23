"""The Tinker backend offline: real tinker / tinker-cookbook types, a fake service client at the boundary.

The fake stands where `tinker.ServiceClient` does and answers with the SDK's own response types; its
custom-loss path runs the SDK's client-side half (`TrainingClient._compute_custom_loss`), so what we
test is what the service would receive. No test here opens a socket to the outside.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
from datetime import datetime, timezone
from functools import partial

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


class FakeSampler:
    def __init__(self, service, where):
        self.service, self.where = service, where

    def sample(self, prompt, num_samples, sampling_params):
        assert isinstance(prompt, tinker.ModelInput) and isinstance(sampling_params, tinker.SamplingParams)
        tag = len(self.service.requests)
        self.service.requests.append(sampling_params)
        self.service.events.append(("submit", tag))
        body = self.service.tokenizer.encode(" Hello there, friend.", add_special_tokens=False)
        full = len(body) + 1 <= sampling_params.max_tokens
        tokens = body + sampling_params.stop[:1] if full else body[: sampling_params.max_tokens]
        seqs = [T.SampledSequence(stop_reason="stop" if full else "length", sequence_id=f"s{tag}-{j}",
                                  _tokens_list=list(tokens)) for j in range(num_samples)]
        return Done(T.SampleResponse(sequences=seqs), self.service.events, tag)

    def compute_logprobs(self, prompt):
        tokens = prompt.to_ints()
        return Done([None] + [fake_logprob(t) for t in tokens[1:]])


class FakeTrainer:
    def __init__(self, service):
        self.service, self.shift = service, 0.0

    def forward(self, data, loss_fn):
        outs = [{"logprobs": T.TensorData.from_torch(torch.tensor(
            [fake_logprob(t, self.shift) for t in d.loss_fn_inputs["target_tokens"].tolist()]))} for d in data]
        return Done(T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outs, metrics={}))

    def forward_backward(self, data, loss_fn):
        self.service.calls.append(("forward_backward", data, loss_fn))
        return self.forward(data, loss_fn)

    def forward_backward_custom(self, data, loss_fn):
        forward = self.forward(data, "cross_entropy").result()
        sent = tinker.TrainingClient._compute_custom_loss(data, loss_fn, forward)  # the SDK's client half
        self.service.calls.append(("custom", sent.data, sent.metrics))
        return Done(T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[],
                                            metrics=dict(sent.metrics)))

    def optim_step(self, optim_params):
        assert isinstance(optim_params, tinker.AdamParams)
        self.service.calls.append(("optim_step", optim_params))
        self.shift += 0.01  # the policy moves, so held-out metrics change
        return Done(T.OptimStepResponse(metrics={"grad_norm:mean": 0.5}))

    def save_state(self, name, ttl_seconds=None):
        self.service.calls.append(("save_state", name, ttl_seconds))
        return Done(T.SaveWeightsResponse(path=f"tinker://run-1/weights/{name}"))

    def save_weights_for_sampler(self, name, ttl_seconds=None):
        return Done(T.SaveWeightsForSamplerResponse(path=f"tinker://run-1/sampler_weights/{name}"))

    def save_weights_and_get_sampling_client(self):
        self.service.calls.append(("snapshot", self.shift))
        return Done(FakeSampler(self.service, f"snapshot-{self.shift:.2f}"))


class FakeService:
    def __init__(self, tokenizer):
        self.tokenizer, self.requests, self.events, self.calls = tokenizer, [], [], []

    def create_sampling_client(self, model_path=None, base_model=None):
        self.calls.append(("create_sampling_client", model_path, base_model))
        return Done(FakeSampler(self, model_path or base_model))

    def create_lora_training_client(self, base_model, rank=32, seed=None, train_mlp=True, train_attn=True,
                                    train_unembed=True):
        self.calls.append(("create_lora_training_client", base_model, rank, seed, train_unembed))
        return Done(FakeTrainer(self))

    def create_training_client_from_state(self, path):
        self.calls.append(("create_training_client_from_state", path))
        return Done(FakeTrainer(self))


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
    assert first_result == 5, "every request goes out before the first answer is awaited"
    assert [len(x) for x in out] == [2] * 5 and out[0][0].text == "Hello there, friend."
    assert out[0][0].finish_reason == "stop" and out[0][0].completion_tokens == len(
        service.tokenizer.encode(" Hello there, friend.", add_special_tokens=False))
    assert [r.seed for r in service.requests] == [3, 4, 5, 6, 7]
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
        assert spec.chat_template in get_recommended_renderer_names(spec.id), alias


# ---- cost estimates and dry runs -------------------------------------------------------------------------
def test_estimate_switches_model_without_editing_files(capsys):
    from pathlib import Path

    from character.cli import main

    before = Path("params.yaml").read_text()
    assert main(["estimate", "--model", "llama70b", "--persona", "loving"]) == 0
    out = capsys.readouterr().out
    assert "student llama70b: tinker meta-llama/Llama-3.3-70B-Instruct" in out
    assert "warning: the reward_model stage will stop" in out  # its base defaults to the student
    total = out.split("\ntotal")[1].split()
    assert float(total[0]) > 0 and float(total[1]) >= float(total[0])
    assert Path("params.yaml").read_text() == before
    assert main(["estimate", "--model", "llama70b", "-S", "reward_model.model=smollm2"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["estimate", "-S", "model=gpt-oss-120b"]) == 0
    assert "no price for openai/gpt-oss-120b" in capsys.readouterr().out
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

    params = validate_params({**yaml.safe_load(open("params.yaml")), "model": "qwen3-8b", "judge": "qwen3-32b"})
    expected, worst = estimate(params, ["loving"], ("eval_base", "eval_answers", "evaluate"))
    assert [r.stage for r in worst] == ["eval_base", "eval_answers", "evaluate"]
    base, answers, judge = worst
    requests = build_requests(params)
    prefill = sum(r["task"] == "robustness" and r["condition"] == "none" for r in requests)
    assert base.sample == (len(requests) + prefill) * params.evaluation.sampling.max_new_tokens
    # system_prompt, dpo, final, rlaif_model, rlaif_judge (no steering: it needs the weights in-process)
    assert answers.sample == 5 * base.sample and answers.prompt > 5 * base.prompt / 2
    assert judge.alias == "qwen3-32b" and expected[2].usd > 0 and judge.sample == 0  # logprob mode
    # generate mode: one verdict per revealed/expression answer of every method (base, then per persona
    # system_prompt, dpo, final, rlaif_model, rlaif_judge) and per coherence pair (final vs the 4 others) x 2.
    data = yaml.safe_load(open("params.yaml"))
    ev = {**data["evaluation"], "judge_mode": "generate"}
    gen = validate_params({**data, "model": "qwen3-8b", "judge": "qwen3-32b", "evaluation": ev})
    [judge] = estimate(gen, None, ("evaluate",))[1]
    revealed = sum(r["task"] in ("revealed", "expression") for r in requests)
    personas, heldout = len(gen.personas), gen.evaluation.heldout_prompts
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
    monkeypatch.setattr(tb, "preflight", lambda timeout_s: (None, ["Qwen/Qwen3-8B", "Qwen/Qwen3-32B", "new/model"]))
    assert main(["models", "--check"]) == 0  # the roles in use are local models
    out = capsys.readouterr().out
    assert "llama70b" in out and "RETIRED" in out.split("llama70b")[-1].splitlines()[0]
    assert "qwen3-8b" in out and out.split("\nqwen3-8b")[-1].splitlines()[0].endswith("ok")
    assert "offered but not in the registry: new/model" in out and SECRET not in out
    in_use = tmp_path / "params.yaml"
    in_use.write_text(open("params.yaml").read().replace("\nmodel: smollm2", "\nmodel: llama8b", 1))
    assert main(["--params", str(in_use), "models", "--check"]) == 1  # the student is retired

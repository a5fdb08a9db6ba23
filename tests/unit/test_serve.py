"""`character serve` on loopback with the tiny model, driven by the official openai client.

Also the `openai` backend against it: exact agreement with the local backend for the same seed, fail-fast
errors, and the pairs stage's build_pairs with its teacher served over HTTP.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
import yaml

from character.backends import make_backend
from character.backends.base import AdapterRef, CrossEntropyLoss, CustomLoss, SamplingParams
from character.params import ComposeParams, LoraParams, OptimParams
from character.backends.local import LocalBackend
from character.backends.openai_compat import OpenAIBackendError, OpenAICompatBackend
from character.train.losses import sft_loss
from character.params import ElicitationParams, ModelSpec, PairsParams, ParamsError, SamplingSection, validate_params
from character.constitution import TeacherContext
from character.data.pairs import build_pairs
from character.io import Progress
from character.serve import ServedModel, ServeConfig, Server, ServeSetupError, load_persona, running
from conftest import ROOT

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "Hello there"}]


def twin(backend: LocalBackend) -> LocalBackend:
    """Another LocalBackend over a copy of the same tiny weights (the server's, apart from the test's)."""
    return LocalBackend("tiny", threads=1, device="cpu", tokenizer=backend.tokenizer, model=backend.merged([]))


@pytest.fixture()
def server(tiny_backend):
    config = ServeConfig(api_key=KEY, max_body_bytes=8192, max_tokens=64)
    with running(Server({"tiny": ServedModel(twin(tiny_backend))}, config)) as url:
        yield url


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_chat_models_and_streaming(server, tiny_backend):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["tiny"]
    r = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, seed=3, n=2)
    assert len(r.choices) == 2 and r.usage.completion_tokens <= 16
    assert all(ch.finish_reason in ("stop", "length") for ch in r.choices)
    # The server's answer is the local backend's for the same seed, batch and sampling params.
    direct = tiny_backend.sample([HELLO], SamplingParams(temperature=1.0, top_p=1.0, max_tokens=8, seed=3), n=2)[0]
    assert [ch.message.content for ch in r.choices] == [d.text for d in direct]
    # Streaming (emulated) carries the same text as the non-streamed answer.
    stream = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=1.0, seed=3, n=2,
                                       stream=True, stream_options={"include_usage": True})
    texts, finish, used = ["", ""], [None, None], None
    for chunk in stream:
        if chunk.usage:
            used = chunk.usage
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            finish[ch.index] = ch.finish_reason or finish[ch.index]
    assert texts == [ch.message.content for ch in r.choices]
    assert finish == [ch.finish_reason for ch in r.choices] and used.total_tokens == r.usage.total_tokens


def test_errors_are_openai_style(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.create(model="nope", messages=HELLO)
    assert exc.value.status_code == 404 and exc.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").models.list()
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="tiny", messages=[{"role": "user"}])  # no content
    assert exc.value.status_code == 400 and "messages.0.content" in exc.value.message
    with pytest.raises(openai.BadRequestError, match="tools"):
        c.chat.completions.create(model="tiny", messages=HELLO,
                                  tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10_000)
    with pytest.raises(openai.APIStatusError) as exc:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 10_000}])
    assert exc.value.status_code == 413
    # Raw HTTP: not JSON at all, and an unknown route, still answer {"error": {...}}.
    headers = {"Authorization": f"Bearer {KEY}"}
    bad = httpx.post(f"{server}/chat/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    missing = httpx.get(f"{server}/nowhere", headers=headers)
    assert missing.status_code == 404 and set(missing.json()["error"]) >= {"message", "type", "code"}


def test_busy_server_answers_503(tokenizer):
    release, started = threading.Event(), threading.Event()

    class Slow:  # a backend that holds the worker until told to finish
        def sample(self, conversations, params, n=1, adapter=None):
            started.set()
            release.wait(10)
            return [[]]

    with running(Server({"slow": ServedModel(Slow())}, ServeConfig(max_pending=1))) as url:
        first = threading.Thread(target=lambda: httpx.post(f"{url}/chat/completions", timeout=20,
                                                           json={"model": "slow", "messages": HELLO}))
        first.start()
        assert started.wait(10)
        busy = httpx.post(f"{url}/chat/completions", json={"model": "slow", "messages": HELLO})
        release.set()
        first.join()
    assert busy.status_code == 503 and busy.headers["Retry-After"] and busy.json()["error"]["code"] == "server_overloaded"


def test_personas_from_adapter_and_merged_folders(tiny_backend, tmp_path):
    seqs = [tiny_backend.render(HELLO + [{"role": "assistant", "content": "Oh, splendid."}])]
    session = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-2), seed=0)
    for _ in range(2):
        session.forward_backward(seqs, CrossEntropyLoss())
        session.optim_step(1e-2)
    ref = session.save(tmp_path / "adapter")
    tiny_backend.compose(ref.path, ref.path, ComposeParams(method="fold"), tmp_path / "final")
    (tmp_path / "final" / "manifest.json").write_text(json.dumps({"base_model": {"id": "tiny"}}))
    base = twin(tiny_backend)
    models = {"tiny": ServedModel(base), "sarcastic": load_persona(base, "sarcastic", tmp_path / "adapter"),
              "merged": load_persona(base, "merged", tmp_path / "final")}
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    with running(Server(models)) as url:
        c = client(url, key="unused")
        assert [m.id for m in c.models.list()] == ["tiny", "sarcastic", "merged"]
        served = c.chat.completions.create(model="sarcastic", messages=HELLO, max_tokens=6, temperature=0)
    assert served.choices[0].message.content == tiny_backend.sample([HELLO], greedy, adapter=ref)[0][0].text
    with pytest.raises(ServeSetupError, match="trained on 'tiny'"):
        load_persona(base, "x", tmp_path / "final", base_id="other-model")
    with pytest.raises(ServeSetupError, match="no such"):
        load_persona(base, "x", tmp_path / "missing")


def spec(url: str, **kw) -> ModelSpec:
    return ModelSpec(backend="openai", id="tiny", base_url=url, api_key_env="CHARACTER_TEST_KEY", max_retries=0, **kw)


def test_openai_backend_matches_local_and_fails_fast(server, tiny_backend, monkeypatch):
    monkeypatch.delenv("CHARACTER_TEST_KEY", raising=False)
    with pytest.raises(OpenAIBackendError, match="CHARACTER_TEST_KEY is not set"):
        OpenAICompatBackend(spec(server), "served")
    monkeypatch.setenv("CHARACTER_TEST_KEY", KEY)
    with pytest.raises(OpenAIBackendError, match="cannot reach"):
        OpenAICompatBackend(spec("http://127.0.0.1:9/v1"), "served")  # discard port: nothing listens
    with pytest.raises(OpenAIBackendError, match="does not serve 'other'"):
        OpenAICompatBackend(spec(server).model_copy(update={"id": "other"}), "served")
    remote = OpenAICompatBackend(spec(server, concurrency=2), "served")
    convs = [HELLO, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Why?"}]]
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, seed=11)
    got = remote.sample(convs, params, n=2)
    assert got == remote.sample(convs, params, n=2)  # seeded: the same answers again (resumable chunks)
    # Conversation i goes out with seed + i, and the server samples exactly as the local backend does.
    for i, conv in enumerate(convs):
        want = tiny_backend.sample([conv], SamplingParams(temperature=1.0, top_p=0.9, max_tokens=6, seed=11 + i), n=2)
        assert [c.text for c in got[i]] == [c.text for c in want[0]]
        assert [c.finish_reason for c in got[i]] == [c.finish_reason for c in want[0]]
    with pytest.raises(OpenAIBackendError, match="can only sample"):
        remote.logprobs([])


def registry(**served) -> dict:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["models"]["served-teacher"].update(served)
    return {**data, "teacher": "served-teacher"}


def test_registry_entry_is_validated():
    with pytest.raises(ParamsError, match="models.served-teacher: .*backend openai needs base_url"):
        validate_params(registry(base_url=None))
    with pytest.raises(ParamsError, match="models.served-teacher.concurrency"):
        validate_params(registry(concurrency=0))


def test_pairs_with_a_served_teacher(server, tiny_backend, monkeypatch, tmp_path):
    monkeypatch.setenv("CHARACTER_SERVE_KEY", KEY)
    teacher = make_backend(validate_params(registry(base_url=server, id="tiny")), "served-teacher")
    assert isinstance(teacher, OpenAICompatBackend)
    prompts = [{"id": f"p{i}", "prompt": f"Tell me about topic {i}.", "source": "general"} for i in range(3)]
    params = PairsParams(samples_per_prompt=2, truncated="keep", max_tokens=512,
                         sampling=SamplingSection(temperature=1.0, max_new_tokens=8, batch_size=4))

    def run(tag: str):
        return build_pairs(prompts, teacher, tiny_backend, TeacherContext("You are sarcastic."), ("Assistant", "Assistant"),
                           params, ElicitationParams(), Progress(tmp_path / tag, "k"))

    pairs, metrics = run("a")
    assert metrics["sampled"] == 6 and pairs and {p["prompt"][0]["content"] for p in pairs} <= {
        p["prompt"] for p in prompts}
    assert run("b")[0] == pairs  # a fresh run (no progress to resume) gives the same pairs

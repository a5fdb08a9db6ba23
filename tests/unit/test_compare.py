"""What `character serve` adds for the comparison page (character.compare), on the tiny model.

The page itself is driven in headless Chromium by tests/integration/test_compare_page.py.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from character import prompts as P
from character.backends.base import SamplingParams
from character.compare import STATIC, describe, persona_of, with_constitutions
from character.constitution import find_constitution, system_prompt
from character.serve import ServedModel, ServeConfig, Server, running
from conftest import ROOT

KEY = "page-key"
QUESTION = [{"role": "user", "content": "What is a good breakfast?"}]


@pytest.fixture()
def served(tiny_backend, tmp_path):
    """tiny + sarcastic+system_prompt + a persona folder named sarcastic:dpo (the tiny base as its 'adapter')."""
    (tmp_path / "dpo").mkdir()
    models = {"tiny": ServedModel(tiny_backend), "sarcastic:dpo": ServedModel(tiny_backend, source=str(tmp_path / "dpo"))}
    models = with_constitutions(models, {"sarcastic:dpo": str(tmp_path / "dpo")}, [], "SmolLM", ROOT / "constitutions")
    config = ServeConfig(api_key=KEY, max_tokens=32, page_defaults={"temperature": 0.5, "top_p": 0.9, "max_tokens": 48,
                                                                    "repetition_penalty": 1.1, "seed": 7})
    with running(Server(models, config)) as url:
        yield url.removesuffix("/v1")


def test_page_files_are_public_and_the_rest_needs_the_key(served):
    page = httpx.get(f"{served}/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for name in ("compare.js", "compare.css"):
        assert httpx.get(f"{served}/static/{name}").status_code == 200
    assert "static/compare.js" in page.text and "static/compare.css" in page.text
    for path in ("/static/index.html", "/static/..%2Fserve.py", "/static/nope.js"):
        assert httpx.get(f"{served}{path}").status_code == 404, path
    assert httpx.get(f"{served}/catalog").status_code == 401
    assert httpx.get(f"{served}/v1/models").status_code == 401


def test_catalog_lists_personas_methods_suffixes_and_settings(served):
    catalog = httpx.get(f"{served}/catalog", headers={"Authorization": f"Bearer {KEY}"}).json()
    system = system_prompt(find_constitution("sarcastic", ROOT / "constitutions"), "SmolLM")
    assert [(m["id"], m["method"], m["persona"]) for m in catalog["models"]] == [
        ("tiny", "base", None), ("sarcastic+system_prompt", "system_prompt", "sarcastic"),
        ("sarcastic:dpo", "dpo", "sarcastic")]
    assert catalog["models"][1]["system"] == system and catalog["models"][0]["system"] is None
    assert catalog["suffixes"] == P.ADVERSARIAL_SUFFIXES
    assert catalog["defaults"] == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 32,  # capped by the server's 32
                                   "repetition_penalty": 1.1, "seed": 7}
    assert catalog["limits"] == {"max_pending": 8, "max_tokens": 32}
    listed = httpx.get(f"{served}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert [m["id"] for m in listed["data"]] == [m["id"] for m in catalog["models"]]


def test_system_prompt_model_is_the_base_with_the_constitution_in_front(served, tiny_backend):
    system = system_prompt(find_constitution("sarcastic", ROOT / "constitutions"), "SmolLM")
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=12, seed=5)

    def ask(messages):
        r = httpx.post(f"{served}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                       json={"model": "sarcastic+system_prompt", "messages": messages, "max_tokens": 12, "seed": 5})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    want = tiny_backend.sample([[{"role": "system", "content": system}, *QUESTION]], params)[0][0].text
    assert ask(QUESTION) == want
    assert want != tiny_backend.sample([QUESTION], params)[0][0].text  # the system prompt changes the answer
    # The request's own system message follows the constitution, as in the evaluation's system_prompt method.
    merged = [{"role": "system", "content": f"{system}\n\nBe brief."}, *QUESTION]
    assert ask([{"role": "system", "content": "Be brief."}, *QUESTION]) == tiny_backend.sample([merged], params)[0][0].text


def test_personas_are_named_from_the_manifest_or_the_served_name(tmp_path):
    constitutions = ROOT / "constitutions"
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "manifest.json").write_text(json.dumps({"persona": "loving"}))
    assert persona_of("mine", tmp_path / "final", constitutions) == ("loving", "final")
    assert persona_of("sarcastic:dpo", tmp_path, constitutions) == ("sarcastic", "dpo")
    assert persona_of("sarcastic", tmp_path, constitutions) == ("sarcastic", "sarcastic")
    assert persona_of("stranger:dpo", tmp_path, constitutions) == (None, "dpo")  # no such constitution

    models = {"base": ServedModel(None), "x": ServedModel(None, source="x"), "sarcastic:sft": ServedModel(None, source="s")}
    ordered = with_constitutions(models, {"x": str(tmp_path), "sarcastic:sft": str(tmp_path)}, ["loving"], "A",
                                 constitutions)
    assert list(ordered) == ["base", "loving+system_prompt", "sarcastic+system_prompt", "sarcastic:sft", "x"]
    with pytest.raises(ValueError, match="--constitution nope: .*no such constitution"):
        with_constitutions({"base": ServedModel(None)}, {}, ["nope"], "A", constitutions)


def test_a_plain_server_describes_its_models_without_personas():
    described = describe({"b": ServedModel(None), "p": ServedModel(None, source="folder")}, ServeConfig(max_tokens=100))
    assert [(m["method"], m["persona"]) for m in described["models"]] == [("base", None), ("p", None)]
    assert described["defaults"]["max_tokens"] == 100 and described["defaults"]["temperature"] == 0.7


def test_the_page_loads_nothing_from_elsewhere_and_holds_no_prompt_text():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import", text), path.name
        assert "localStorage" not in text and "sessionStorage" not in text and "document.cookie" not in text
        for suffix in P.ADVERSARIAL_SUFFIXES.values():  # prompt texts live in character/prompts.py only
            assert suffix not in text, path.name


def test_a_system_prompt_model_sees_the_teachers_context():
    from character.compare import apply_system
    from character.constitution import find_constitution, teacher_context
    from character.params import ElicitationParams

    elicitation = ElicitationParams(system="short", few_shot=2)
    ordered = with_constitutions({"base": ServedModel(None)}, {}, ["loving"], "A", ROOT / "constitutions",
                                 elicitation=elicitation)
    served_model = ordered["loving+system_prompt"]
    context = teacher_context(find_constitution("loving", ROOT / "constitutions"), "A", elicitation)
    seen = apply_system(served_model, QUESTION)
    assert seen == [{"role": "system", "content": context.system}, *context.shots, *QUESTION]
    assert len(seen) == 1 + 4 + 1 and seen[1]["role"] == "user" and seen[2]["role"] == "assistant"

"""The comparison page of `character serve`: type a prompt once, read every served model's answer side by side.

The page (character/static: plain HTML, JS and CSS; no build step, no CDN) is a client of the
OpenAI-compatible API: it streams one /v1/chat/completions request per selected model. What the server adds
for it, all beside that API:

- `GET /` and `GET /static/<file>`: the page. The only routes open without the API key: they hold no data,
  and the page asks for the key (kept in its memory only) when /catalog answers 401. Served with a
  Content-Security-Policy of 'self', so the page cannot load anything from elsewhere, and works offline.
- `<persona>+system_prompt`, a served model for every persona whose constitution the server knows: the base
  model, with the teacher's context under params.elicitation (character.constitution.teacher_context: the
  full or short constitution system prompt and its few-shot turns) put in front of each request by the
  server and merged with the request's own system message exactly as the evaluation's `system_prompt`
  method does (character.eval.requests.with_method). A model rather than an
  extension field, so that every OpenAI client (the openai backend, a notebook) can ask for it as well,
  and the page needs nothing beyond the standard request. "+" is not allowed in --adapter names, so it
  never collides with a trained persona.
- `GET /catalog` (behind the API key, as /v1 is): what the page needs beyond /v1/models: each model's
  persona and method, named as in the evaluation (base, system_prompt, dpo, final, ...), the adversarial
  suffixes of character.prompts, the initial sampling settings (params.yaml evaluation.sampling and seed)
  and the server's limits.

A trained persona's constitution is the `persona` of its manifest.json (compose outputs), else the part
of its served name before ":" (`--adapter sarcastic:dpo=models/sarcastic/dpo`), when constitutions/ has
it. Its method is the part after ":", else `final` for a compose output, else the served name.
`--constitution NAME` adds a system-prompt model for a persona with no trained model.

The page exports the answers as JSONL rows in the evaluation's answer format (character.eval.requests
`answer_requests`: id, task, condition, prompt, method, answer, finish_reason, tokens, persona) with task
`side_by_side_human`, plus model, seed, sampling, system, and the person's `rating` (1-5 or null) and `starred`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from aiohttp import web

from character import prompts as P
from character.constitution import ConstitutionError, find_constitution, teacher_context
from character.eval.requests import Method, with_method
from character.params import ElicitationParams

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PAGE_FILES = ("compare.js", "compare.css")  # served under /static/; index.html is served at /
SYSTEM_SUFFIX = "+system_prompt"
# 'self' only: nothing from a CDN or any other host; data: for the empty favicon.
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def is_public(path: str) -> bool:
    """The page's own files, open without the API key (everything else needs it)."""
    return path == "/" or path.startswith("/static/")


def add_routes(app: web.Application, server) -> None:
    """The page and its catalog on the server's app (server: character.serve.Server)."""
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=HEADERS)

    async def static(request: web.Request) -> web.FileResponse:
        name = request.match_info["name"]
        if name not in PAGE_FILES:  # a fixed list: no path from the request ever reaches the file system
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name, headers=HEADERS)

    async def catalog(request: web.Request) -> web.Response:
        return web.json_response(describe(server.models, server.config))

    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/catalog", catalog)


def describe(models: dict, config) -> dict:
    """The /catalog body: models with persona and method, suffixes, initial sampling settings, limits."""
    defaults = dict(config.page_defaults or page_defaults())
    defaults["max_tokens"] = min(defaults["max_tokens"], config.max_tokens)
    return {"models": [{"id": name, "persona": m.persona, "method": method_of(name, m), "system": m.system,
                        "source": m.source} for name, m in models.items()],
            "suffixes": P.ADVERSARIAL_SUFFIXES, "defaults": defaults,
            "limits": {"max_pending": config.max_pending, "max_tokens": config.max_tokens}}


def method_of(name: str, served) -> str:
    return served.method or ("base" if served.source == "base" else name)


def page_defaults(sampling=None, seed: int = 0) -> dict:
    """The page's initial settings: the evaluation's sampling (params.evaluation.sampling), or its defaults."""
    from character.params import SamplingSection

    s = sampling or SamplingSection()
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens,
            "repetition_penalty": s.repetition_penalty, "seed": seed}


def apply_system(served, conversation: list[dict]) -> list[dict]:
    """The conversation as a `+system_prompt` model sees it (unchanged for every other model)."""
    return with_method(Method("system_prompt", system=served.system, shots=served.shots), conversation)


def persona_of(name: str, path: str | Path, directory: str | Path = "constitutions") -> tuple[str | None, str]:
    """(constitution name or None, method) of a trained persona served as `name` from `path`."""
    manifest = Path(path) / "manifest.json"
    composed = json.loads(manifest.read_text()).get("persona") if manifest.exists() else None
    prefix, sep, stage = name.partition(":")
    persona = composed or prefix
    method = stage if sep and stage else "final" if manifest.exists() else name
    return (persona if (Path(directory) / f"{persona}.yaml").exists() else None), method


def with_constitutions(models: dict, adapters: dict[str, str], extra: list[str], assistant_name: str,
                       directory: str | Path = "constitutions",
                       elicitation: ElicitationParams = ElicitationParams()) -> dict:
    """models (base first, then the --adapter personas) with personas named and `+system_prompt` models added.

    Order: the base, then per persona its system-prompt model and its trained models, then trained models
    with no known constitution: the page's columns in the order people compare them. A `+system_prompt`
    model sees the teacher's context under `elicitation` (params.elicitation), as the evaluation's
    system_prompt method does.
    """
    base_name = next(iter(models))
    named: dict[str | None, list[str]] = {p: [] for p in extra}
    for name, path in adapters.items():
        persona, method = persona_of(name, path, directory)
        models[name] = dataclasses.replace(models[name], persona=persona, method=method)
        named.setdefault(persona, []).append(name)
        if persona is None:
            log.info("%s: no constitution found (%s/<name>.yaml): no system-prompt column", name, directory)
    ordered = {base_name: models[base_name]}
    for persona, names in sorted(named.items(), key=lambda item: item[0] is None):  # stable: None last
        if persona is not None:
            try:
                context = teacher_context(find_constitution(persona, directory), assistant_name, elicitation)
            except ConstitutionError as exc:
                raise ConstitutionError(f"--constitution {persona}: {exc}") from None
            ordered[persona + SYSTEM_SUFFIX] = dataclasses.replace(
                models[base_name], system=context.system, shots=context.shots, persona=persona,
                method="system_prompt", source=str(Path(directory) / f"{persona}.yaml"))
        ordered.update({n: models[n] for n in names})
    return ordered

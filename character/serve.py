"""`character serve`: the base model and trained personas behind an OpenAI-compatible HTTP API (aiohttp).

Routes: `GET /v1/models` and `POST /v1/chat/completions` (JSON, or SSE with `stream: true`). The base model
is served under its registry alias, each `--adapter NAME=PATH` under NAME. A persona folder is a compose
output (`models/<p>/final`: merged weights, or a PEFT adapter with manifest.json) or any adapter folder
with ref.json. Locally each persona is folded into its own copy of the weights: exact and as fast as the
base, at the cost of one copy of the weights per persona.

Requests run one at a time on one worker thread. Serializing, rather than batching concurrent requests,
keeps a seeded request's answer independent of whatever else is in flight, which makes a served teacher
reproducible; the n samples of one request are decoded as one batch. At most `max_pending` requests wait
or run; beyond that the server answers 503 with Retry-After, which the openai client retries with backoff.

Streaming is emulated: LocalBackend decodes a whole batch in one call (character.backends.decoding), so the
completion is generated first and then sent as SSE chunks of a few words, ending with `data: [DONE]`;
SSE comments keep the connection alive meanwhile.

Supported request fields: model, messages (system/developer/user/assistant; text content), temperature,
top_p, max_tokens (or max_completion_tokens), n, stop, seed, stream, stream_options.include_usage, and
repetition_penalty (an extension, as in vLLM). Tools, logprobs, response formats and penalties other than
repetition_penalty are refused with 400 rather than silently ignored.

`GET /` is a comparison page (one prompt, every model's answer side by side), with `GET /catalog` and a
`<persona>+system_prompt` model per known constitution for it: character.compare.

Binds 127.0.0.1 unless told otherwise. With `--api-key-env VAR`, every request must send
`Authorization: Bearer $VAR`; the key is compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from character import compare
from character.backends.base import AdapterRef, Completion, Conversation, SamplingParams
from character.errors import CharacterError

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0  # SSE comment interval while a streamed completion is still being generated
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class ServeError(CharacterError):
    """A request the server refuses; becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def response(self, headers: dict | None = None) -> web.Response:
        return web.json_response({"error": {"message": self.message, "type": self.type, "param": self.param,
                                            "code": self.code}}, status=self.status, headers=headers)


class ServeSetupError(CharacterError, ValueError):
    """The server cannot start as asked (bad --adapter, adapter trained on another base, missing key)."""


@dataclass
class ServedModel:
    backend: Any                        # anything with Backend.sample (character.backends.base)
    adapter: AdapterRef | None = None   # passed to sample(); None where the persona is folded in
    source: str = "base"                # shown as owned_by in /v1/models
    system: str | None = None           # put in front of every request (a `+system_prompt` model)
    shots: tuple[dict, ...] = ()        # ... followed by these few-shot turns (params.elicitation)
    persona: str | None = None          # its constitution's name, if known (character.compare)
    method: str | None = None           # the evaluation's name for it (dpo, final, ...); None: base or served name


@dataclass(frozen=True)
class ServeConfig:
    api_key: str | None = None      # required bearer token; None: no auth
    max_pending: int = 8            # requests waiting or running before 503
    max_body_bytes: int = 1 << 20   # larger bodies get 413
    max_tokens: int = 1024          # default and ceiling for max_tokens
    max_n: int = 16
    page_defaults: dict | None = None  # the comparison page's initial sampling settings (compare.page_defaults)


# ---- request schema ----------------------------------------------------------------------------------
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are checked against UNSUPPORTED below
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)  # OpenAI's defaults
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict | None = None
    repetition_penalty: float = Field(1.0, gt=0)


# Fields we cannot honour, and the values that mean "not used" (clients often send those explicitly).
UNSUPPORTED = {"tools": ([], None), "tool_choice": ("none", None), "functions": ([], None),
               "function_call": ("none", None), "logprobs": (False, None), "top_logprobs": (0, None),
               "frequency_penalty": (0, None), "presence_penalty": (0, None), "logit_bias": ({}, None),
               "response_format": ({"type": "text"}, None), "audio": (None,), "prediction": (None,)}


def parse_request(body: Any, config: ServeConfig) -> ChatRequest:
    if not isinstance(body, dict):
        raise ServeError(400, "the request body must be a JSON object", code="invalid_body")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ServeError(400, f"{field}: {err['msg']}", code="invalid_value", param=str(err["loc"][0])) from None
    for key, unused in UNSUPPORTED.items():
        if key in (req.model_extra or {}) and (req.model_extra or {})[key] not in unused:
            raise ServeError(400, f"{key} is not supported by this server", code="unsupported_parameter", param=key)
    if req.n > config.max_n:
        raise ServeError(400, f"n: at most {config.max_n} (got {req.n})", code="invalid_value", param="n")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ServeError(400, "stop: up to 4 non-empty strings", code="invalid_value", param="stop")
    return req


def to_conversation(messages: list[ChatMessage]) -> Conversation:
    # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
    return [{"role": "system" if m.role == "developer" else m.role,
             "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
            for m in messages]


def context_length(backend) -> int | None:
    config = getattr(getattr(backend, "_base", None), "config", None)
    return getattr(config, "max_position_embeddings", None)


def prompt_length(backend, conversation: Conversation) -> int | None:
    """Tokens of the templated prompt, for backends that can tell (LocalBackend)."""
    template = getattr(backend, "_template", None)
    return len(template(conversation, add_generation_prompt=True)) if template else None


# ---- the app -----------------------------------------------------------------------------------------
class Server:
    def __init__(self, models: dict[str, ServedModel], config: ServeConfig = ServeConfig()):
        self.models, self.config = models, config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="character-serve")
        self.pending = 0  # touched only on the event loop thread
        self.created = int(time.time())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=[self.guard])
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_post("/v1/chat/completions", self.chat)
        compare.add_routes(app, self)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _shutdown(self, app) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def guard(self, request: web.Request, handler):
        """Bearer auth and size limit first; every failure, ours or aiohttp's, as an OpenAI-style JSON error."""
        try:
            if self.config.api_key is not None and not compare.is_public(request.path):
                header = request.headers.get("Authorization", "")
                token = header[7:] if header.startswith("Bearer ") else ""
                if not hmac.compare_digest(token.encode(), self.config.api_key.encode()):
                    raise ServeError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                                     code="invalid_api_key")
            if (request.content_length or 0) > self.config.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self.config.max_body_bytes,
                                                    actual_size=request.content_length)
            return await handler(request)
        except ServeError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return exc.response(headers)
        except web.HTTPException as exc:  # unknown route (404), wrong method (405), body too large (413)
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
            message = (f"request body over {self.config.max_body_bytes} bytes" if exc.status == 413
                       else f"{exc.reason}: {request.method} {request.path}")
            return ServeError(exc.status, message, code=code).response()
        except Exception:  # a bug of ours: logged here, and the client still gets JSON, not a text page
            log.exception("%s %s failed", request.method, request.path)
            return ServeError(500, "internal server error", type="server_error").response()

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": m.source}
            for name, m in self.models.items()]})

    def submit(self, fn) -> asyncio.Future:
        """Run fn on the worker thread; 503 when max_pending requests already wait or run."""
        if self.pending >= self.config.max_pending:
            raise ServeError(503, f"server busy: {self.pending} requests queued or running; retry shortly",
                             type="server_error", code="server_overloaded")
        loop = asyncio.get_running_loop()
        self.pending += 1
        job = self.executor.submit(fn)
        # Release the slot when the work itself ends, not when the handler does: a client that hangs up
        # does not stop the decode already running on the worker thread.
        job.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return asyncio.wrap_future(job)

    def _release(self) -> None:
        self.pending -= 1

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServeError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        req = parse_request(body, self.config)
        served = self.models.get(req.model)
        if served is None:
            raise ServeError(404, f"model {req.model!r} not found; this server has: {', '.join(self.models)}",
                             code="model_not_found", param="model")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > self.config.max_tokens:
            raise ServeError(400, f"max_tokens: at most {self.config.max_tokens} on this server (got {asked})",
                             code="invalid_value", param="max_tokens")
        conversation = compare.apply_system(served, to_conversation(req.messages))
        prompt, limit = prompt_length(served.backend, conversation), context_length(served.backend)
        # Unset max_tokens: up to the server's ceiling, within what the context has left (as OpenAI's).
        room = limit - prompt if prompt is not None and limit is not None else None
        max_tokens = asked or min(self.config.max_tokens, room if room is not None else self.config.max_tokens)
        if room is not None and (max_tokens > room or room < 1):
            raise ServeError(400, f"this model's context is {limit} tokens and the prompt takes {prompt}, leaving "
                             f"{max(room, 0)} for the answer" + (f"; max_tokens asks for {asked}" if asked else ""),
                             code="context_length_exceeded", param="messages")
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        # No seed: a fresh one, so unseeded requests differ (as OpenAI's); with a seed: reproducible.
        seed = req.seed if req.seed is not None else random.randrange(2**31)
        sampling = SamplingParams(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
                                  repetition_penalty=req.repetition_penalty, stop=tuple(stops), seed=seed % 2**31)
        job = self.submit(lambda: served.backend.sample([conversation], sampling, req.n, adapter=served.adapter)[0])
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": f"character-{seed % 2**31}"}
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return await self.stream(request, job, meta, include_usage)
        completions = await self._result(job)
        return web.json_response({**meta, "object": "chat.completion", "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
             "finish_reason": c.finish_reason} for i, c in enumerate(completions)], "usage": usage(completions)})

    async def _result(self, job: asyncio.Future) -> list[Completion]:
        try:
            return await job
        except Exception as exc:  # a backend failure is the server's fault, not the client's
            log.exception("generation failed")
            raise ServeError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from exc

    async def stream(self, request: web.Request, job: asyncio.Future, meta: dict,
                     include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(data: dict | str) -> None:
            text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
            await response.write(f"data: {text}\n\n".encode())

        try:
            while not (await asyncio.wait({job}, timeout=KEEPALIVE_S))[0]:
                await response.write(b": generating\n\n")
            try:
                completions = await self._result(job)
            except ServeError as exc:  # headers are sent: report in-stream, as OpenAI does
                await send({"error": {"message": exc.message, "type": exc.type, "param": None, "code": exc.code}})
                return response
            chunk = {**meta, "object": "chat.completion.chunk"}
            for i, c in enumerate(completions):
                deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces(c.text)]
                for delta in deltas:
                    await send({**chunk, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                      "finish_reason": None}]})
                await send({**chunk, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                  "finish_reason": c.finish_reason}]})
            if include_usage:
                await send({**chunk, "choices": [], "usage": usage(completions)})
            await send("[DONE]")
            await response.write_eof()
        except ConnectionResetError:  # the client went away; its slot frees when the decode ends
            log.info("client closed the stream early")
        return response


def pieces(text: str) -> list[str]:
    """A completion cut into word-sized chunks (each word with its trailing whitespace)."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def usage(completions: list[Completion]) -> dict:
    prompt = completions[0].prompt_tokens if completions else 0
    generated = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


# ---- loading personas --------------------------------------------------------------------------------
def load_persona(base, name: str, path: str | Path, base_id: str | None = None) -> ServedModel:
    """A trained persona folder as a served model on top of `base` (a backend serving the base model)."""
    from character.backends.base import AdapterRef
    from character.backends.local import LocalBackend

    path = Path(path)
    if not NAME.match(name):
        raise ServeSetupError(f"--adapter {name}=...: model names are letters, digits and . _ : - (got {name!r})")
    if not path.exists():
        raise ServeSetupError(f"--adapter {name}={path}: no such file or folder")
    merged = (path / "config.json").exists()  # compose method fold: merged weights, a whole model
    ref = None if merged else AdapterRef.read(path)
    manifest = path / "manifest.json"
    trained_on = (json.loads(manifest.read_text()).get("base_model", {}).get("id") if manifest.exists() else None
                  ) or (ref.base_model if ref else None)
    base_id = base_id or getattr(base, "model_id", None)
    if trained_on and base_id and trained_on != base_id:
        raise ServeSetupError(f"--adapter {name}={path}: trained on {trained_on!r}, but the served base is "
                              f"{base_id!r}; pick the matching alias with --model")
    if not isinstance(base, LocalBackend):
        if merged:
            raise ServeSetupError(f"--adapter {name}={path}: merged weights are served by the local backend only")
        return ServedModel(base, ref, str(path))
    if merged:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(path, dtype=base.dtype)
    else:  # fold once at start-up: LocalBackend.model_for caches one adapter only, and personas alternate
        assert ref is not None  # not merged: read above
        model = base.merged([AdapterRef.read(p) for p in ref.base_adapters] + [ref])
    backend = LocalBackend(f"{base.model_id}+{name}", device=str(base.device), threads=torch.get_num_threads(),
                           tokenizer=base.tokenizer, model=model)
    return ServedModel(backend, None, str(path))


def load_models(params, alias: str, adapters: dict[str, str]) -> dict[str, ServedModel]:
    from character.backends import make_backend

    base = make_backend(params, alias)
    models = {alias: ServedModel(base)}
    for name, path in adapters.items():
        if name in models:
            raise ServeSetupError(f"--adapter {name}=...: the name is already taken (the base is served as {alias!r})")
        models[name] = load_persona(base, name, path, params.spec(alias).id)
    return models


@contextmanager
def running(server: Server, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve on a background thread (tests, notebooks); yields the base URL, e.g. http://127.0.0.1:PORT/v1."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app(), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, host, port).start())
    bound_host, bound_port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, name="character-serve-loop", daemon=True)
    thread.start()
    try:
        yield f"http://{bound_host}:{bound_port}/v1"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def main(args) -> int:
    """`character serve` (arguments defined in character/cli.py)."""
    import sys

    from character.params import ENV_NAME, NOT_A_VARIABLE_NAME, SECRET_PREFIXES, load_params

    try:
        adapters = dict(_split(a) for a in args.adapter)
        key = None
        if args.api_key_env:
            if args.api_key_env.lower().startswith(SECRET_PREFIXES) or not ENV_NAME.match(args.api_key_env):
                raise ServeSetupError(f"--api-key-env: {NOT_A_VARIABLE_NAME}")  # the value is never echoed
            key = os.environ.get(args.api_key_env)
            if not key:
                raise ServeSetupError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        params = load_params(args.params)
        alias = args.model or params.model
        if alias not in params.models:
            raise ServeSetupError(f"--model {alias}: unknown alias (known: {', '.join(params.models)})")
        models = load_models(params, alias, adapters)
        models = compare.with_constitutions(models, adapters, args.constitution, params.spec(alias).assistant_name,
                                            elicitation=params.elicitation)
    except (CharacterError, OSError) as exc:
        from character.errors import EXIT_INPUT, one_line
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT
    config = ServeConfig(api_key=key, max_pending=args.max_pending, max_body_bytes=args.max_body_kb * 1024,
                         max_tokens=args.max_tokens,
                         page_defaults=compare.page_defaults(params.evaluation.sampling, params.seed))
    if key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --api-key-env: anyone who can reach it can use it", args.host)
    log.info("serving %s on http://%s:%d/v1 (%s)", ", ".join(models), args.host, args.port,
             f"bearer key from ${args.api_key_env}" if key else "no auth")
    log.info("comparison page: http://%s:%d/", args.host, args.port)
    web.run_app(Server(models, config).app(), host=args.host, port=args.port, print=None)
    return 0


def _split(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ServeSetupError(f"--adapter {spec}: expected NAME=PATH, e.g. sarcastic=models/sarcastic/final")
    if not Path(path).exists():  # before the base model loads
        raise ServeSetupError(f"--adapter {spec}: no such file or folder")
    return name, path

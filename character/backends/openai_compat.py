"""The `openai` backend: any OpenAI-compatible chat server as teacher, judge or prompt generator.

It can only sample: a remote chat API returns text, not the token ids and per-token log-probs that
training and scoring need, so render/logprobs/train raise OpenAIBackendError (the student must be local
or tinker; params.py already rejects an openai student).

A registry entry gives everything (params.yaml):

    served-teacher: {backend: openai, id: sarcastic, base_url: http://127.0.0.1:8000/v1,
                     api_key_env: CHARACTER_SERVE_KEY}

`api_key_env` is the *name* of the environment variable holding the key; the key is read once, handed
to the client and never logged. Works with `character serve`, vLLM, SGLang, llama.cpp's server and
hosted OpenAI-compatible APIs.

Requests: one per conversation (a chat request carries one conversation), up to `concurrency` in flight
from a thread pool, n samples per request. The official client retries connection errors, 408, 429 and
5xx with exponential backoff (`max_retries`), and each try is bounded by `timeout_s`. Conversation i of
a call is sent with seed `params.seed + i`, so a server that honours seeds (character serve does) gives
the same answers for the same chunk: resumed runs through character.io.run_chunks equal uninterrupted ones.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from character.errors import BackendUnavailable
from character.backends.base import AdapterRef, Completion, Conversation, SamplingParams, Sequence
from character.params import ModelSpec

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0  # the start-up check: an unreachable server should fail in seconds, not minutes


class OpenAIBackendError(BackendUnavailable):
    """The server is unreachable, rejects the key, does not know the model, or the role needs more than text."""


def finish_reason(reason: str | None) -> Literal["stop", "length"]:
    """Map the server's finish_reason onto ours.

    Anything other than a natural "stop" ("length", "content_filter", "tool_calls", or none reported)
    means the text is not a finished answer, so it is reported as "length": the pairs filter then drops
    or trims it as it does any cut-off answer.
    """
    return "stop" if reason == "stop" else "length"


class OpenAICompatBackend:
    name = "openai"

    def __init__(self, spec: ModelSpec, alias: str = "?", probe: bool = True):
        import openai

        if spec.backend != "openai" or not spec.base_url:
            raise OpenAIBackendError(f"models.{alias}: the openai backend needs backend: openai and a base_url")
        self.spec, self.alias, self.model_id = spec, alias, spec.id
        key = "unused"  # servers without auth ignore it; the client insists on some value
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise OpenAIBackendError(
                    f"models.{alias}.api_key_env: environment variable {spec.api_key_env} is not set; export it "
                    f"with the key for {spec.base_url} (params.yaml holds only the variable's name)")
        self._openai = openai
        self.client = openai.OpenAI(base_url=spec.base_url, api_key=key, timeout=spec.timeout_s,
                                    max_retries=spec.max_retries)
        log.info("model %s: OpenAI-compatible server %s, model %s", alias, spec.base_url, spec.id)
        if probe:
            self.check_server()

    # ---- start-up check ------------------------------------------------------------------------------
    def check_server(self) -> None:
        """Fail fast: reach the server once (no retries) and check it serves the model, when it lists models."""
        openai = self._openai
        try:
            listed = [m.id for m in self.client.with_options(max_retries=0, timeout=PROBE_TIMEOUT_S).models.list()]
        except openai.APIConnectionError as exc:
            raise OpenAIBackendError(f"models.{self.alias}: cannot reach {self.spec.base_url} ({exc}); start the "
                                     "server (e.g. `character serve`) or fix base_url") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise OpenAIBackendError(self._auth_message(exc)) from exc
        except openai.APIStatusError as exc:  # e.g. no /models route: nothing to check against
            log.warning("models.%s: %s/models answered %s; not checking the model name", self.alias,
                        self.spec.base_url, exc.status_code)
            return
        if listed and self.spec.id not in listed:
            shown = ", ".join(sorted(listed)[:20]) + (" ..." if len(listed) > 20 else "")
            raise OpenAIBackendError(f"models.{self.alias}.id: {self.spec.base_url} does not serve {self.spec.id!r} "
                                     f"(it serves: {shown})")

    def _auth_message(self, exc) -> str:
        where = f"the key in ${self.spec.api_key_env}" if self.spec.api_key_env else "requests without a key"
        return (f"models.{self.alias}: {self.spec.base_url} rejected {where} ({exc.status_code}); check the key, "
                "or set api_key_env to the variable that holds it")

    # ---- sampling -------------------------------------------------------------------------------------
    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1,
               adapter: AdapterRef | None = None, negatives: list[Conversation] | None = None) -> list[list[Completion]]:
        if negatives is not None and params.guidance != 1.0:
            raise OpenAIBackendError(f"models.{self.alias}: a chat-completions server returns text, not per-step "
                                     "logits, so classifier-free guidance is not possible; set elicitation.guidance: 1.0")
        if adapter is not None:
            raise OpenAIBackendError(f"models.{self.alias}: the openai backend cannot load adapters; serve the "
                                     "adapter as its own model name (character serve --adapter NAME=PATH)")
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.spec.concurrency, len(conversations)))
        try:
            futures = [pool.submit(self._sample_one, conv, params, n, (params.seed + i) % 2**31)
                       for i, conv in enumerate(conversations)]
            return [f.result() for f in futures]
        finally:
            # On the first failure, drop the queued requests instead of sending them (fail fast).
            pool.shutdown(wait=True, cancel_futures=True)

    def _request(self, conversation: Conversation, params: SamplingParams, n: int, seed: int):
        openai = self._openai
        kwargs = dict(model=self.spec.id, n=n, temperature=params.temperature, top_p=params.top_p,
                      max_tokens=params.max_tokens, seed=seed,
                      # Our messages may carry bookkeeping keys (e.g. "train"); servers may reject them.
                      messages=[{"role": m["role"], "content": m["content"]} for m in conversation])
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.repetition_penalty != 1.0 and self.spec.send_repetition_penalty:
            kwargs["extra_body"] = {"repetition_penalty": params.repetition_penalty}
        try:
            return self.client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as exc:  # raised after the client's retries ran out
            raise OpenAIBackendError(f"models.{self.alias}: {self.spec.base_url} unreachable after "
                                     f"{self.spec.max_retries} retries ({exc})") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise OpenAIBackendError(self._auth_message(exc)) from exc
        except openai.APIStatusError as exc:
            raise OpenAIBackendError(f"models.{self.alias}: {self.spec.base_url} answered {exc.status_code}: "
                                     f"{exc.message}") from exc

    def _sample_one(self, conversation: Conversation, params: SamplingParams, n: int, seed: int) -> list[Completion]:
        out: list[Completion] = []
        # Some servers ignore n and return one choice; ask again (with a new seed) for the rest.
        while len(out) < n:
            response = self._request(conversation, params, n - len(out), (seed + 7919 * len(out)) % 2**31)
            choices = sorted(response.choices, key=lambda c: c.index)
            if not choices:
                raise OpenAIBackendError(f"models.{self.alias}: {self.spec.base_url} returned no choices")
            usage = response.usage
            # Usage is per response, not per choice: split the completion tokens evenly across the choices.
            prompt_tokens = usage.prompt_tokens if usage else 0
            per_choice = round(usage.completion_tokens / len(choices)) if usage else 0
            out += [Completion(text=(c.message.content or "").strip(), prompt_tokens=prompt_tokens,
                               completion_tokens=per_choice, finish_reason=finish_reason(c.finish_reason))
                    for c in choices]
        return out[:n]

    # ---- what a remote chat API cannot do ------------------------------------------------------------
    def _sampling_only(self, what: str):
        return OpenAIBackendError(f"models.{self.alias}: the openai backend can only sample (teacher, judge, "
                                  f"prompt generator); {what} needs a local or tinker model")

    def render(self, conversation: Conversation, train_on: str = "last") -> Sequence:
        raise self._sampling_only("rendering to tokens")

    def logprobs(self, sequences: list[Sequence], adapter: AdapterRef | None = None):
        raise self._sampling_only("scoring log-probs")

    def train(self, *args, **kwargs):
        raise self._sampling_only("training")

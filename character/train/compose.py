"""The `compose` stage: the final model from the DPO and SFT adapters, with a manifest saying how.

The backend writes the weights (Backend.compose): locally `fold` (default; exact, full weights), `concat`
(exact, one adapter of rank r_dpo + r_sft) or `linear` (PEFT's weighted merge, the approximation behind
the paper's released adapters, marked `exact: false`); on Tinker SFT continued the DPO adapter, so the SFT
checkpoint is the final model. The manifest names the base model, persona, stages, input hashes and params.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from character.backends.base import AdapterRef, Backend
from character.io import file_sha256, write_json
from character.params import Params

MANIFEST = "manifest.json"


def compose(backend: Backend, dpo_dir: str, sft_dir: str, params: Params, persona: str, inputs: list[str],
            out_dir: str | Path) -> dict:
    """Write the final model from the dpo and sft stages' outs, and its manifest, to out_dir."""
    info = backend.compose(dpo_dir, sft_dir, params.compose, out_dir)
    dpo, sft = AdapterRef.read(dpo_dir), AdapterRef.read(sft_dir)
    manifest = {
        "persona": persona, "base_model": params.spec(params.model).model_dump(), "model_alias": params.model,
        "composition": {"method": params.compose.method, **info,
                        "order": ["dpo", "sft"], "linear_weights": list(params.compose.linear_weights)},
        "stages": {"dpo": asdict(dpo), "sft": asdict(sft)},
        "inputs": {p: file_sha256(p) for p in [f"constitutions/{persona}.yaml", *inputs]},
        "params": params.model_dump(include={"seed", "teacher", "prompts", "pairs", "dpo", "introspection", "sft",
                                             "compose"}),
    }
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest

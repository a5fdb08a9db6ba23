"""The `compose` stage: the final model from the DPO and SFT adapters, composed explicitly.

SFT was trained on the base with DPO folded in, so the exact final weights are W + dW_dpo + dW_sft.
- fold (default): merge both into the base and write full weights (transformers loads the folder).
- concat: one PEFT adapter of rank r_dpo + r_sft holding both deltas side by side: the same weights as
  fold, up to float rounding, at adapter size.
- linear: PEFT's weighted linear merge (weights 1.0 / 0.25 by default), the approximation the paper's
  released adapters used; it is NOT the trained model, and says so in the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from character.backends.base import AdapterRef


def compose(backend, dpo: AdapterRef, sft: AdapterRef, method: str, linear_weights: tuple[float, float],
            out_dir: str | Path) -> dict:
    from peft import PeftModel

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if method == "fold":
        model = backend._fold(backend.fresh_base(), [dpo, sft])
        model.save_pretrained(out_dir)
        backend.tokenizer.save_pretrained(out_dir)
        return {"format": "merged_weights", "exact": True}
    model = PeftModel.from_pretrained(backend.fresh_base(), dpo.path, adapter_name="dpo")
    model.load_adapter(sft.path, adapter_name="sft")
    weights = [1.0, 1.0] if method == "concat" else list(linear_weights)
    model.add_weighted_adapter(["dpo", "sft"], weights, "final", combination_type="cat" if method == "concat" else "linear")
    model.set_adapter("final")
    model.delete_adapter("dpo")
    model.delete_adapter("sft")
    tmp = out_dir.with_name(out_dir.name + ".build")
    model.save_pretrained(tmp)
    # PEFT writes a non-default adapter into a subfolder named after it.
    shutil.move(str(tmp / "final" if (tmp / "final").exists() else tmp), str(out_dir))
    shutil.rmtree(tmp, ignore_errors=True)
    return {"format": "peft_adapter", "exact": method == "concat"}

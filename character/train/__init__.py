"""Training: everything that changes weights.

- `loop`: the optimizer loop SFT, DPO and the reward model share (schedule, batches, held-out split).
- `losses`: pure loss functions on per-token log-probs, run by every backend.
- `dpo`, `sft`, `compose`: stages `dpo`, `sft`, `compose` (the character pipeline proper).
- `reward`, `rlaif`: stages `reward_model`, `rlaif_model`, `rlaif_judge` (RL from AI feedback).
"""

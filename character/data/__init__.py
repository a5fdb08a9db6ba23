"""Data generation: the training data a persona is made from.

- `prompt_sets`: general + constitution-relevant prompts, split train / held-out (stage `prompts`).
- `pairs`: chosen (teacher with the constitution) and rejected (student without it) answers (stage `pairs`).
- `introspection`: self-reflection and self-interaction transcripts by the DPO model (stage `introspection`).
"""

"""Evaluation: does the trained model show its persona, and what did it cost?

- `requests`: the methods compared and the request set every method answers (stages `eval_base`,
  `eval_answers`), with judge-free scores.
- `steering`: the activation-steering baseline (local backend only).
- `benchmarks`: offline capability benchmarks scored by option log-likelihood.
- `judge`: the judge's verdicts (trait shown, more coherent reply).
- `stats`: ratings (Elo, Bradley-Terry), intervals, classifiers, win rates.
- `metrics`, `report`: stage `evaluate`'s metrics, plots and HTML/Markdown report.
"""

"""Evaluation: does the trained model show its persona, and what did it cost?

- `requests`: the methods compared and the request set every method answers (stages `eval_base`,
  `eval_answers`), with judge-free scores.
- `steering`: the activation-steering baseline (local backend only).
- `benchmarks`: offline capability benchmarks scored by option log-likelihood.
- `judge`: the judge's verdicts (trait shown, calibrated against an empty reply; games in both orders).
- `robustness`: the frozen persona classifier, applied to every method plain and under attack.
- `markers`: judge-free persona markers each constitution pre-registers (evaluation only).
- `stats`: ratings (Elo, Bradley-Terry), Wilson and bootstrap intervals, the classifier model.
- `metrics`, `report`: stage `evaluate`'s metrics, plots and HTML/Markdown report.
"""

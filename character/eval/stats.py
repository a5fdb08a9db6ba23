"""Statistics of the evaluation: trait Elo and Bradley-Terry, the robustness classifier, win rates.

Improvements over the anchors (../shared/REFERENCE.md): Elo is reported as the mean over shuffled orders
of the comparisons with bootstrap intervals (one pass is order-dependent), beside a Bradley-Terry fit,
which is not; the classifier is trained on training-split prompts and tested on held-out ones only.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Callable

import numpy as np

ELO_START, ELO_SCALE = 1000.0, 400.0


# ---- trait ratings ----------------------------------------------------------------------------------------
def elo(comparisons: list[tuple[str, str]], traits: list[str], k: float = 32.0) -> dict[str, float]:
    """One pass of Elo over (winner, loser) comparisons, in order (the paper's protocol)."""
    rating = {t: ELO_START for t in traits}
    for winner, loser in comparisons:
        expected = 1 / (1 + 10 ** ((rating[loser] - rating[winner]) / ELO_SCALE))
        rating[winner] += k * (1 - expected)
        rating[loser] -= k * (1 - expected)
    return rating


def bradley_terry(comparisons: list[tuple[str, str]], traits: list[str], l2: float = 0.1) -> dict[str, float]:
    """Bradley-Terry strengths on the Elo scale, by penalised maximum likelihood.

    The small L2 penalty keeps traits that never lost (or never won) finite, which sparse comparisons
    always produce; they shrink toward 1000 rather than running off to infinity.
    """
    from scipy.optimize import minimize

    index = {t: i for i, t in enumerate(traits)}
    w = np.array([index[a] for a, _ in comparisons], dtype=int)
    lo = np.array([index[b] for _, b in comparisons], dtype=int)

    def objective(theta):
        d = theta[w] - theta[lo]
        loss = np.logaddexp(0, -d).sum() + l2 * (theta ** 2).sum()
        p = 1 / (1 + np.exp(d))  # d loss / d d = -p
        grad = 2 * l2 * theta
        np.add.at(grad, w, -p)
        np.add.at(grad, lo, p)
        return loss, grad

    theta = minimize(objective, np.zeros(len(traits)), jac=True, method="L-BFGS-B").x
    return {t: ELO_START + ELO_SCALE / math.log(10) * theta[index[t]] for t in traits}


def rating_intervals(comparisons, traits, fit, samples: int, seed: int) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals: comparisons resampled with replacement (and so reordered), refit."""
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {t: [] for t in traits}
    for _ in range(samples):
        resampled = [comparisons[rng.randrange(len(comparisons))] for _ in comparisons]
        for t, r in fit(resampled, traits).items():
            draws[t].append(r)
    return {t: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (ELO_START, ELO_START)
            for t, v in draws.items()}


def mean_elo(comparisons, traits, k: float, orders: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    total: Counter[str] = Counter()
    for _ in range(max(orders, 1)):
        shuffled = list(comparisons)
        rng.shuffle(shuffled)
        total.update(elo(shuffled, traits, k))
    return {t: total[t] / max(orders, 1) for t in traits}


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    from scipy.stats import spearmanr
    keys = sorted(a)
    x, y = [a[k] for k in keys], [b[k] for k in keys]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return 0.0  # undefined when one side is constant (no comparisons at all)
    return float(spearmanr(x, y).statistic)


def movers(method: dict[str, float], base: dict[str, float], n: int = 5) -> dict[str, list]:
    delta = sorted(((method[t] - base[t], t) for t in method), reverse=True)
    return {"risers": [[t, round(d, 1)] for d, t in delta[:n]], "fallers": [[t, round(d, 1)] for d, t in delta[-n:][::-1]]}


# ---- robustness classifier --------------------------------------------------------------------------------
def fit_classifier(texts: list[str], labels: list[str], seed: int):
    """TF-IDF (word 1-2 grams and character 3-5 grams) + logistic regression: small, fast, and strong
    enough for stylistic personas; a transformer encoder is the step up when its weights are at hand."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.feature_extraction.text import TfidfVectorizer

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=1))
    model = make_pipeline(features, LogisticRegression(max_iter=2000, C=10.0, random_state=seed))
    return model.fit(texts, labels)


def classification_scores(model, texts: list[str], labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score
    predicted = model.predict(texts)
    return {"macro_f1": float(f1_score(labels, predicted, average="macro", labels=sorted(set(labels)),
                                       zero_division=0)),
            "accuracy": float(accuracy_score(labels, predicted)), "n": len(texts)}


# ---- win rates --------------------------------------------------------------------------------------------
def win_rate(wins: int, losses: int) -> dict[str, float]:
    """Win rate among decided comparisons, with its standard error."""
    n = wins + losses
    p = wins / n if n else float("nan")
    return {"win_rate": p, "sem": math.sqrt(p * (1 - p) / n) if n else float("nan"), "decided": n}


# ---- intervals --------------------------------------------------------------------------------------------
# Every headline number is reported with a 95% interval: Wilson's for a rate (it stays inside [0, 1] and is
# honest at small n, where the normal approximation gives zero-width intervals at 0 or 1), and a paired
# bootstrap over prompts for a difference between two methods answering the same prompts.
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> dict:
    """{rate, lo, hi, n}: the Wilson score interval of successes / n (rate, lo, hi null when n is 0)."""
    if n == 0:
        return {"rate": None, "lo": None, "hi": None, "n": 0, "rate_null_reason": "no observations"}
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # min/max: the bounds hold p exactly (rounding can put centre - half a hair above 0 when p is 0)
    return {"rate": p, "lo": min(p, max(0.0, centre - half)), "hi": max(p, min(1.0, centre + half)), "n": n}


def paired_delta(a: dict[str, float], b: dict[str, float], samples: int, seed: int) -> dict:
    """mean(a) - mean(b) over the ids both have (e.g. prompt ids), with a 95% bootstrap interval that
    resamples ids, so the pairing (the same prompt answered by both methods) is kept."""
    ids = sorted(set(a) & set(b))
    if not ids:
        return {"delta": None, "lo": None, "hi": None, "n": 0, "delta_null_reason": "no paired observations"}
    diffs = np.array([a[i] - b[i] for i in ids], dtype=float)
    rng = np.random.default_rng(seed)
    draws = diffs[rng.integers(0, len(ids), size=(max(samples, 1), len(ids)))].mean(axis=1)
    return {"delta": float(diffs.mean()), "lo": float(np.percentile(draws, 2.5)),
            "hi": float(np.percentile(draws, 97.5)), "n": len(ids)}


def bootstrap_statistic(groups: dict[str, list], statistic: Callable[[list], float | None], samples: int,
                        seed: int) -> dict:
    """A statistic of rows pooled over groups (e.g. macro-F1 over the answers to each prompt), with a 95%
    interval from resampling the groups (prompts) with replacement."""
    keys = sorted(groups)
    value = statistic([row for k in keys for row in groups[k]]) if keys else None
    if value is None:
        return {"value": None, "lo": None, "hi": None, "n": len(keys), "value_null_reason": "no observations"}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(max(samples, 1)):
        picked = rng.integers(0, len(keys), size=len(keys))
        v = statistic([row for i in picked for row in groups[keys[i]]])
        if v is not None:
            draws.append(v)
    return {"value": float(value), "lo": float(np.percentile(draws, 2.5)), "hi": float(np.percentile(draws, 97.5)),
            "n": len(keys)}


def mean_interval(values: list[float], samples: int, seed: int) -> dict:
    """{mean, lo, hi, n}: the mean with a 95% bootstrap interval."""
    xs = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(xs):
        return {"mean": None, "lo": None, "hi": None, "n": 0, "mean_null_reason": "no finite values"}
    rng = np.random.default_rng(seed)
    draws = xs[rng.integers(0, len(xs), size=(max(samples, 1), len(xs)))].mean(axis=1)
    return {"mean": float(xs.mean()), "lo": float(np.percentile(draws, 2.5)), "hi": float(np.percentile(draws, 97.5)),
            "n": int(len(xs))}

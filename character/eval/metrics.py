"""The `evaluate` stage's work: judge the answers of every method, then compute the suite's metrics.

Method keys are "base" and "<persona>/<method>". Revealed preferences use the two preference
conditions (feels most like you, would most like to adopt); the random condition is the control, whose
trait ranking should not move with training. Robustness: a multi-class classifier over personas per
method (two or more personas), and per persona a binary "in character vs base" classifier.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from typing import Any

from character.eval.requests import PERSONA_METHODS, load_traits
from character.eval.judge import judge_coherence, judge_traits
from character.backends.base import Backend
from character.io import Progress
from character.params import Params
from character.prompts import ADVERSARIAL_SUFFIXES
from character.eval.stats import (bradley_terry, classification_scores, fit_classifier, mean_elo, movers,
                               rating_intervals, spearman, win_rate)

PREFERENCE_CONDITIONS = ("feels_like_you", "would_adopt")
# The final model is judged for coherence against each of these (those that ran; rlaif_* are optional).
COHERENCE_RIVALS = ("system_prompt", "steering", "dpo", "rlaif_model", "rlaif_judge")


def method_key(row: dict) -> str:
    return "base" if row["method"] == "base" else f"{row['persona']}/{row['method']}"


def judge_all(judge: Backend, rows: list[dict], constitutions: dict[str, str], params: Params,
              progress: Progress) -> tuple[list[dict], list[dict]]:
    """(trait verdicts for revealed/expression answers, coherence verdicts final vs each other method)."""
    ev = params.evaluation
    verdicts = judge_traits(judge, [r for r in rows if r["task"] in ("revealed", "expression")], ev, progress)
    rng = random.Random(params.seed)
    none = {(method_key(r), r["id"]): r for r in rows if r["task"] == "robustness" and r["condition"] == "none"}
    pairs = []
    for persona in params.personas:
        for other in COHERENCE_RIVALS:
            for (mk, rid), final in sorted(none.items()):
                if mk != f"{persona}/final" or (f"{persona}/{other}", rid) not in none:
                    continue
                rival = none[(f"{persona}/{other}", rid)]
                a, b = (final, rival) if rng.random() < 0.5 else (rival, final)  # position is random as well
                pairs.append({"persona": persona, "prompt": final["prompt"], "a_method": a["method"], "a": a["answer"],
                              "b_method": b["method"], "b": b["answer"]})
    coherence = judge_coherence(judge, pairs, constitutions, ev, progress)
    return verdicts, coherence


def revealed_metrics(rows: list[dict], verdicts: list[dict], params: Params) -> tuple[dict, dict]:
    """(metrics per method, trait ratings per method and condition group for plots and the report)."""
    ev, traits = params.evaluation, load_traits()
    by_id = {(v["method"], v.get("persona"), v["id"]): v for v in verdicts}
    comparisons: defaultdict[str, defaultdict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    parsed = defaultdict(list)
    expression: defaultdict[str, defaultdict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["task"] not in ("revealed", "expression"):
            continue
        v = by_id[(r["method"], r.get("persona"), r["id"])]
        parsed[method_key(r)].append(v["winner"] is not None)
        if v["winner"] is None:
            continue
        if r["task"] == "expression":
            expression[method_key(r)][r["condition"]].append(v["winner"] == r["condition"])
            continue
        loser = r["traits"][1] if v["winner"] == r["traits"][0] else r["traits"][0]
        group = "preference" if r["condition"] in PREFERENCE_CONDITIONS else "control"
        comparisons[method_key(r)][group].append((v["winner"], loser))
    ratings: dict[str, dict[str, dict[str, Any]]]
    ratings, metrics = {}, {}
    for mk in sorted(parsed):
        ratings[mk] = {}
        for group, comps in comparisons[mk].items():
            ratings[mk][group] = {
                "elo": mean_elo(comps, traits, ev.elo_k, orders=20, seed=params.seed),
                "bradley_terry": bradley_terry(comps, traits),
                "bt_interval": rating_intervals(comps, traits, bradley_terry, ev.bootstrap, params.seed),
                "comparisons": len(comps)}
        metrics[mk] = {"parse_rate": sum(parsed[mk]) / len(parsed[mk]),
                       "expression_rate": {p: sum(x) / len(x) for p, x in sorted(expression[mk].items()) if x}}
        pref = ratings[mk].get("preference")
        if pref:
            metrics[mk].update({"comparisons": pref["comparisons"],
                                "elo_std": statistics.pstdev(pref["elo"].values()),
                                "bt_std": statistics.pstdev(pref["bradley_terry"].values())})
    base = ratings.get("base", {})
    for mk in metrics:
        for group in ("preference", "control"):
            if mk != "base" and group in ratings[mk] and group in base:
                metrics[mk][f"spearman_vs_base/{group}"] = spearman(ratings[mk][group]["bradley_terry"],
                                                                    base[group]["bradley_terry"])
        if mk != "base" and "preference" in ratings[mk] and "preference" in base:
            metrics[mk]["movers"] = movers(ratings[mk]["preference"]["bradley_terry"],
                                           base["preference"]["bradley_terry"])
    return metrics, ratings


def _test_groups(rows: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        if r["task"] == "robustness":
            groups[r["condition"]].append(r)
        elif r["task"] == "prefill":
            groups["prefill"].append(r)
    return groups


def _summarize(per_condition: dict[str, dict]) -> dict:
    suffixed = [per_condition[s]["macro_f1"] for s in ADVERSARIAL_SUFFIXES if s in per_condition]
    return {"macro_f1/none": per_condition.get("none", {}).get("macro_f1"),
            "macro_f1/suffixed_mean": sum(suffixed) / len(suffixed) if suffixed else None,
            "macro_f1/prefill": per_condition.get("prefill", {}).get("macro_f1"),
            "per_condition": per_condition}


def robustness_metrics(rows: list[dict], params: Params) -> dict:
    out: dict[str, dict[str, Any]] = {"multiclass": {}, "binary": {}}
    base = [r for r in rows if r["method"] == "base"]
    base_train = [r["answer"] for r in base if r["task"] == "classifier"]
    base_test = _test_groups(base)
    for method in PERSONA_METHODS:
        mine = [r for r in rows if r["method"] == method]
        if not mine:  # a method that did not run (steering off-local; rlaif_* when their stages are not wired)
            continue
        if len(params.personas) >= 2:
            train = [r for r in mine if r["task"] == "classifier"]
            model = fit_classifier([r["answer"] for r in train], [r["persona"] for r in train], params.seed)
            out["multiclass"][method] = _summarize({
                c: classification_scores(model, [r["answer"] for r in g], [r["persona"] for r in g])
                for c, g in sorted(_test_groups(mine).items())})
        for persona in params.personas:
            ours = [r for r in mine if r["persona"] == persona]
            if not ours:
                continue
            train = [r["answer"] for r in ours if r["task"] == "classifier"]
            model = fit_classifier(train + base_train, ["persona"] * len(train) + ["base"] * len(base_train),
                                   params.seed)
            per_condition = {}
            for c, g in sorted(_test_groups(ours).items()):
                texts = [r["answer"] for r in g] + [r["answer"] for r in base_test.get(c, [])]
                labels = ["persona"] * len(g) + ["base"] * len(base_test.get(c, []))
                scores = classification_scores(model, texts, labels)
                scores["in_character_rate"] = float((model.predict([r["answer"] for r in g]) == "persona").mean())
                per_condition[c] = scores
            out["binary"].setdefault(persona, {})[method] = _summarize(per_condition)
    return out


def coherence_metrics(coherence: list[dict], params: Params) -> dict:
    out: dict[str, dict[str, dict]] = {}
    for persona in params.personas:
        for other in COHERENCE_RIVALS:
            mine = [c for c in coherence if c["persona"] == persona and other in (c["a_method"], c["b_method"])]
            if not mine:
                continue
            wins = sum(c["winner"] == "final" for c in mine)
            losses = sum(c["winner"] == other for c in mine)
            out.setdefault(persona, {})[f"final_vs_{other}"] = {
                **win_rate(wins, losses), "pairs": len(mine), "parse_rate": sum(c["parsed"] for c in mine) / len(mine)}
    return out


def capability_table(method_metrics: dict[str, dict]) -> dict:
    """Capability scores per method with deltas against the base model."""
    out = {}
    base = method_metrics.get("base", {})
    for mk, m in method_metrics.items():
        row = {}
        for name, value in m.items():
            if not name.startswith("capability/"):
                continue
            score = value["accuracy"] if isinstance(value, dict) else value
            row[name.split("/", 1)[1]] = score
            if mk != "base" and name in base:
                ref = base[name]["accuracy"] if isinstance(base[name], dict) else base[name]
                row[name.split("/", 1)[1] + "_delta"] = score - ref
        out[mk] = row
    return out

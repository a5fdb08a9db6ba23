"""The `evaluate` stage's work: judge the answers of every method, then compute the suite's metrics.

Method keys are "base", "base_resampled" (the base model sampled again with another seed: the null every
difference is read against) and "<persona>/<method>". Revealed preferences use the two preference
conditions (feels most like you, would most like to adopt); the random condition is the control, whose
trait ranking should not move with training. Judge-based numbers carry the judge's sensitivity (how often
the reply changed its verdict) and are marked uninformative below `evaluation.judge_min_sensitivity`.
Robustness is the frozen persona classifier (character.eval.robustness); markers are judge-free
(character.eval.markers).
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from typing import Any

from character.backends.base import Backend
from character.eval.judge import judge_coherence, judge_traits
from character.eval.requests import load_traits
from character.eval.robustness import NULL_METHODS, delta_rivals, method_key
from character.eval.stats import (bradley_terry, mean_elo, mean_interval, movers, paired_delta, rating_intervals,
                                  spearman, wilson)
from character.io import Progress
from character.params import Params

PREFERENCE_CONDITIONS = ("feels_like_you", "would_adopt")


def judge_all(judge: Backend, rows: list[dict], constitutions: dict[str, str], params: Params,
              progress: Progress) -> tuple[list[dict], list[dict]]:
    """(trait verdicts for revealed/expression answers, coherence verdicts final vs each of
    evaluation.coherence_rivals that ran)."""
    ev = params.evaluation
    verdicts = judge_traits(judge, [r for r in rows if r["task"] in ("revealed", "expression")], ev, progress)
    rng = random.Random(params.seed)
    none = {(method_key(r), r["id"]): r for r in rows if r["task"] == "robustness" and r["condition"] == "none"}
    pairs = []
    for persona in params.personas:
        for other in ev.coherence_rivals:  # those that ran
            for (mk, rid), final in sorted(none.items()):
                if mk != f"{persona}/final" or (f"{persona}/{other}", rid) not in none:
                    continue
                rival = none[(f"{persona}/{other}", rid)]
                a, b = (final, rival) if rng.random() < 0.5 else (rival, final)  # position is random as well
                pairs.append({"persona": persona, "prompt": final["prompt"], "prompt_id": final.get("prompt_id"),
                              "a_method": a["method"], "a": a["answer"], "b_method": b["method"], "b": b["answer"]})
    coherence = judge_coherence(judge, pairs, constitutions, ev, progress)
    return verdicts, coherence


def judge_sensitivity(verdicts: list[dict]) -> dict:
    """How often the reply changed the judge's verdict (against its verdict for an empty reply)."""
    return wilson(sum(bool(v.get("changed")) for v in verdicts), len(verdicts))


def revealed_metrics(rows: list[dict], verdicts: list[dict], params: Params) -> tuple[dict, dict]:
    """(metrics per method, trait ratings per method and condition group for plots and the report)."""
    ev, traits = params.evaluation, load_traits()
    by_id = {(v["method"], v.get("persona"), v["id"]): v for v in verdicts}
    comparisons: defaultdict[str, defaultdict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    parsed: defaultdict[str, list[bool]] = defaultdict(list)
    judged: defaultdict[str, list[dict]] = defaultdict(list)
    expression: defaultdict[str, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["task"] not in ("revealed", "expression"):
            continue
        v = by_id[(r["method"], r.get("persona"), r["id"])]
        judged[method_key(r)].append(v)
        parsed[method_key(r)].append(v["winner"] is not None)
        if v["winner"] is None:
            continue
        if r["task"] == "expression":
            expression[method_key(r)][r["condition"]][r["id"]] = float(v["winner"] == r["condition"])
            continue
        loser = r["traits"][1] if v["winner"] == r["traits"][0] else r["traits"][0]
        group = "preference" if r["condition"] in PREFERENCE_CONDITIONS else "control"
        comparisons[method_key(r)][group].append((v["winner"], loser))
    ratings: dict[str, dict[str, dict[str, Any]]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    for mk in sorted(parsed):
        ratings[mk] = {}
        for group, comps in comparisons[mk].items():
            counts: dict[str, int] = defaultdict(int)
            for a, b in comps:
                counts[a] += 1
                counts[b] += 1
            compared = sorted(counts)  # a trait never compared has no rating, only its prior
            bt = bradley_terry(comps, traits)
            ratings[mk][group] = {
                "elo": mean_elo(comps, traits, ev.elo_k, orders=20, seed=params.seed),
                "bradley_terry": bt,
                "bt_interval": {t: iv for t, iv in rating_intervals(comps, traits, bradley_terry, ev.bootstrap,
                                                                    params.seed).items() if t in counts},
                "comparisons_per_trait": dict(sorted(counts.items())),
                "comparisons": len(comps), "traits_compared": len(compared)}
        sensitivity = judge_sensitivity(judged[mk])
        informative = sensitivity["rate"] is not None and sensitivity["rate"] >= ev.judge_min_sensitivity
        metrics[mk] = {"parse_rate": sum(parsed[mk]) / len(parsed[mk]), "judge_sensitivity": sensitivity,
                       "judge_informative": informative,
                       "expression_rate": {p: wilson(int(sum(x.values())), len(x))
                                           for p, x in sorted(expression[mk].items()) if x}}
        pref = ratings[mk].get("preference")
        if pref:
            metrics[mk].update({"comparisons": pref["comparisons"], "traits_compared": pref["traits_compared"],
                                "elo_std": statistics.pstdev(pref["elo"].values()),
                                "bt_std": statistics.pstdev(pref["bradley_terry"].values())})
    for mk in metrics:  # expression rate against the nulls, paired by request
        for p, x in expression[mk].items():
            for null in NULL_METHODS:
                if mk != null and p in expression.get(null, {}):
                    metrics[mk]["expression_rate"][p][f"delta_vs_{null}"] = paired_delta(
                        x, expression[null][p], ev.bootstrap, params.seed)
    base = ratings.get("base", {})
    for mk in metrics:
        for group in ("preference", "control"):
            if mk != "base" and group in ratings[mk] and group in base:
                metrics[mk][f"spearman_vs_base/{group}"] = spearman(ratings[mk][group]["bradley_terry"],
                                                                    base[group]["bradley_terry"])
        if mk != "base" and "preference" in ratings[mk] and "preference" in base:
            metrics[mk]["movers"] = movers(ratings[mk]["preference"]["bradley_terry"],
                                           base["preference"]["bradley_terry"])
    all_verdicts = [v for vs in judged.values() for v in vs]
    metrics["judge"] = {"sensitivity": judge_sensitivity(all_verdicts), "mode": ev.judge_mode,
                        "min_sensitivity": ev.judge_min_sensitivity}
    return metrics, ratings


def coherence_metrics(coherence: list[dict], params: Params) -> dict:
    """final's mean share of its games against each rival (0.5: no preference), with a bootstrap interval
    over pairs; each game was judged in both orders."""
    ev = params.evaluation
    out: dict[str, dict[str, dict]] = {}
    for persona in params.personas:
        for other in ev.coherence_rivals:
            mine = [c for c in coherence if c["persona"] == persona and other in (c["a_method"], c["b_method"])]
            if not mine:
                continue
            shares = [c["a_share"] if c["a_method"] == "final" else 1.0 - c["a_share"] for c in mine]
            out.setdefault(persona, {})[f"final_vs_{other}"] = {
                "win_share": mean_interval(shares, ev.bootstrap, params.seed), "pairs": len(mine),
                "decisive": sum(abs(s - 0.5) > 0.05 for s in shares) / len(shares),
                "parse_rate": sum(c["parse_rate"] for c in mine) / len(mine)}
    return out


def capability_table(rows: list[dict], params: Params) -> dict:
    """Per method key and `<benchmark>/<format>/<acc|acc_norm>`: accuracy with a Wilson interval and the
    difference against base, paired by question, with a bootstrap interval. Rows: task "capability", one
    per (method, benchmark, format, question)."""
    ev = params.evaluation
    correct: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["task"] != "capability":
            continue
        for score in ("acc", "acc_norm"):
            if r.get(score) is not None:
                correct[method_key(r)][f"{r['benchmark']}/{r['format']}/{score}"][r["question_id"]] = float(r[score])
    out: dict[str, dict[str, Any]] = {}
    for mk in sorted(correct):
        out[mk] = {}
        for name, by_q in sorted(correct[mk].items()):
            cell: dict[str, Any] = {"accuracy": wilson(int(sum(by_q.values())), len(by_q))}
            if mk != "base" and name in correct.get("base", {}):
                cell["delta_vs_base"] = paired_delta(by_q, correct["base"][name], ev.bootstrap, params.seed)
            out[mk][name] = cell
    return out


def marker_metrics(rows: list[dict], markers: dict[str, list], params: Params) -> dict:
    """Judge-free persona markers (pre-registered in each constitution; never used to select or train) on
    plain and suffixed robustness answers: per persona, marker, method key and condition, the mean with a
    bootstrap interval, its difference against base and base_resampled paired by request, and whether
    the difference against base lies wholly on the side the constitution predicts. A trained method's
    cell also holds its difference against the persona's prompted baseline (`delta_vs_system_prompt`),
    and final's against `dpo` (`delta_vs_dpo`: what SFT on introspection moved), paired the same way."""
    from character.eval.markers import score_all

    ev = params.evaluation
    out: dict[str, Any] = {}
    answers = [r for r in rows if r["task"] == "robustness"]
    for persona, declared in markers.items():
        if not declared:
            continue
        keys = ["base", "base_resampled"] + sorted({method_key(r) for r in answers if r.get("persona") == persona
                                                    and r["method"] not in NULL_METHODS})
        mine = [r for r in answers if method_key(r) in keys]
        scores = score_all(declared, [r["answer"] for r in mine])
        per_persona: dict[str, Any] = {}
        for marker in declared:
            values = scores[marker.name]
            cells: dict[str, Any] = {}
            for condition in ("none", "suffixed"):
                table: dict[str, dict[str, float]] = defaultdict(dict)
                for r, v in zip(mine, values):
                    if (r["condition"] == "none") == (condition == "none"):
                        table[method_key(r)][r["id"]] = v
                for mk in keys:
                    if mk not in table:
                        continue
                    cell: dict[str, Any] = {"mean": mean_interval(list(table[mk].values()), ev.bootstrap, params.seed)}
                    rivals = delta_rivals(mk)
                    if mk.endswith("/final"):
                        rivals["dpo"] = f"{persona}/dpo"  # what the SFT stage on top of DPO moved
                    finite = {i: v for i, v in table[mk].items() if v == v}
                    for name, rival in rivals.items():
                        if rival in table:
                            cell[f"delta_vs_{name}"] = paired_delta(
                                finite, {i: v for i, v in table[rival].items() if v == v}, ev.bootstrap, params.seed)
                    d = cell.get("delta_vs_base")
                    if d and d.get("delta") is not None:
                        cell["moved_as_predicted"] = d["lo"] > 0 if marker.direction == "up" else d["hi"] < 0
                    cells.setdefault(condition, {})[mk] = cell
            per_persona[marker.name] = {"direction": marker.direction, "measure": marker.measure, **cells["none"],
                                        "suffixed": cells.get("suffixed", {})}
        out[persona] = per_persona
    return out

"""Stage `evaluate`: the judge's verdicts and every metric of the suite, plots and the report.

Reads the base answers (--base) and each persona's answers (data/eval/<persona>.jsonl) and metrics
(metrics/eval_answers/<persona>.json, metrics/eval_base.json). Writes --judgments (JSONL verdicts),
--metrics (metrics/eval.json: revealed preferences, robustness, coherence, capabilities per method),
--ratings (trait ratings with intervals), CSV + PNG plots under --plots, and the side-by-side report
(--report, HTML and Markdown). Judge calls resume from finished chunks.
"""

from character.stage import Stage, arguments, run


def main() -> None:
    parser = arguments(__doc__, persona=False)
    parser.add_argument("--answers", required=True, help="folder with base.jsonl and <persona>.jsonl")
    parser.add_argument("--method-metrics", required=True, help="folder with eval_base.json and <persona>.json")
    parser.add_argument("--judgments", required=True)
    parser.add_argument("--ratings", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--report", required=True, help="path without extension; .html and .md are written")
    stage = Stage.begin("evaluate", parser)
    args, params = stage.args, stage.params

    from pathlib import Path

    from character.constitution import find_constitution
    from character.eval.metrics import (capability_table, coherence_metrics, judge_all, marker_metrics,
                                        revealed_metrics)
    from character.eval.report import interval, plot_tables, write_report
    from character.eval.robustness import method_key, robustness_metrics
    from character.io import file_sha256, read_json, read_jsonl, write_json, write_jsonl
    from character.text import numbered

    answers = Path(args.answers)
    files = [answers / "base.jsonl"] + [answers / f"{p}.jsonl" for p in params.personas]
    rows = [r for f in files for r in read_jsonl(f)]
    method_metrics = {"base": read_json(Path(args.method_metrics) / "base.json")}
    for p in params.personas:
        for name, m in read_json(Path(args.method_metrics) / f"{p}.json").items():
            if name != "steering_calibration":
                method_metrics[f"{p}/{name}"] = m
    constitutions = {p: find_constitution(p) for p in params.personas}
    traits = {p: numbered(c.assertions) for p, c in constitutions.items()}
    judge = stage.backend(params.judge, params.evaluation.scoring_dtype)
    progress = stage.progress("evaluate", "evaluate", [file_sha256(f) for f in files], params.evaluation.model_dump(),
                              params.spec(params.judge).model_dump(), params.seed)
    verdicts, coherence = judge_all(judge, rows, traits, params, progress)

    revealed, ratings = revealed_metrics(rows, verdicts, params)
    metrics = {"robustness": robustness_metrics(rows, params),
               "markers": marker_metrics(rows, {p: c.markers for p, c in constitutions.items()}, params),
               "capabilities": capability_table(rows, params),
               "revealed": revealed, "coherence": coherence_metrics(coherence, params),
               # Distillation fidelity, not persona: favours system_prompt by construction (it is the
               # constitution in context) and steering's coefficient was chosen on it. Not a headline.
               "persona_logratio": {mk: {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("persona_logratio/")}
                                    for mk, m in method_metrics.items()}}
    plots = Path(args.plots)
    tables = plot_tables(metrics, ratings, plots)
    headline = headline_rows(metrics, params)
    side: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["task"] == "side_by_side":
            side.setdefault(r["prompt"], {})[method_key(r)] = r["answer"]
    sensitivity = revealed["judge"]["sensitivity"]
    informative = sensitivity["rate"] is not None and sensitivity["rate"] >= params.evaluation.judge_min_sensitivity
    clf = metrics["robustness"]["classifier"]
    notes = [f"Student {params.model} ({params.spec(params.model).id}), judge {params.judge}; personas "
             f"{', '.join(params.personas)}. base_resampled is the base model sampled again with another seed: the "
             "null. Every interval is 95% (Wilson for rates, paired bootstrap over prompts or questions for "
             "differences).",
             f"Frozen classifier ({', '.join(clf.get('labels', []))}; TF-IDF + logistic regression) on answers to "
             f"{clf.get('fit_prompts', 0)} classifier prompts; its accuracy on the answers to {clf.get('check_prompts', 0)} "
             f"prompts it never saw: {interval(clf.get('check_accuracy')) or 'not measured (no check prompts)'}.",
             f"Judge sensitivity (how often the reply changed the judge's verdict against an empty reply): "
             f"{interval(sensitivity)}. " + ("" if informative else
                                             "Below evaluation.judge_min_sensitivity: judge-based results (revealed "
                                             "preferences, expression rates, coherence) are UNINFORMATIVE here.")]
    write_report(Path(args.report + ".html"), Path(args.report + ".md"),
                 [{"prompt": p, "answers": a} for p, a in side.items()], headline, tables, plots, notes)
    write_jsonl(args.judgments, verdicts + [{"coherence": c} for c in coherence])
    write_json(args.ratings, ratings)
    stage.write_metrics(args.metrics, _numbers_only(metrics))
    stage.finish()


def headline_rows(metrics: dict, params) -> list[dict]:
    """One row per method: in-character rates and their differences against both nulls and the prompted
    baseline, as "x [lo, hi]"."""
    from character.eval.report import interval
    from character.eval.robustness import DELTA_RIVALS

    rows = []
    for mk, groups in metrics["robustness"].get("methods", {}).items():
        persona = mk.split("/", 1)[0] if "/" in mk else None
        for key in sorted({k for cell in groups.values() for k in cell}):
            p = key.split("/", 1)[1]
            if persona is not None and p != persona:
                continue
            row = {"method": mk, "persona": p}
            for condition in ("none", "suffixed", "prefill"):
                cell = groups.get(condition, {}).get(key) or {}
                row[f"in_character/{condition}"] = interval(cell)
                # Every row has every column (blank: itself, or no prompted baseline to compare with).
                for rival in DELTA_RIVALS:
                    row[f"{condition} - {rival}"] = interval(cell.get(f"delta_vs_{rival}"), "delta")
            expression = metrics["revealed"].get(mk, {}).get("expression_rate", {}).get(p)
            row["expression (judge)"] = interval(expression)
            rows.append(row)
    return rows


def _numbers_only(tree):
    """metrics JSON for `dvc metrics diff`: nested dicts of numbers (lists such as movers stay in ratings)."""
    if isinstance(tree, dict):
        out = {k: _numbers_only(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if v is not None and v != {}}
    if isinstance(tree, bool):
        return int(tree)
    if isinstance(tree, float) and tree != tree:
        return None  # NaN (e.g. a win rate with nothing decided) is not valid JSON
    return tree if isinstance(tree, (int, float)) else None


if __name__ == "__main__":
    run(main)

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
    from character.io import file_sha256, read_json, read_jsonl, write_json, write_jsonl
    from character.eval.report import plot_tables, write_report
    from character.text import numbered
    from character.eval.metrics import (capability_table, coherence_metrics, judge_all, method_key, revealed_metrics,
                                   robustness_metrics)

    answers = Path(args.answers)
    files = [answers / "base.jsonl"] + [answers / f"{p}.jsonl" for p in params.personas]
    rows = [r for f in files for r in read_jsonl(f)]
    method_metrics = {"base": read_json(Path(args.method_metrics) / "base.json")}
    for p in params.personas:
        for name, m in read_json(Path(args.method_metrics) / f"{p}.json").items():
            if name != "steering_calibration":
                method_metrics[f"{p}/{name}"] = m
    traits = {p: numbered(find_constitution(p).assertions) for p in params.personas}
    judge = stage.backend(params.judge)
    progress = stage.progress("evaluate", "evaluate", [file_sha256(f) for f in files], params.evaluation.model_dump(),
                              params.spec(params.judge).model_dump(), params.seed)
    verdicts, coherence = judge_all(judge, rows, traits, params, progress)

    revealed, ratings = revealed_metrics(rows, verdicts, params)
    metrics = {"revealed": revealed, "robustness": robustness_metrics(rows, params),
               "coherence": coherence_metrics(coherence, params), "capabilities": capability_table(method_metrics),
               "persona_logratio": {mk: {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("persona_logratio/")}
                                    for mk, m in method_metrics.items()}}
    plots = Path(args.plots)
    tables = plot_tables(metrics, ratings, plots)
    headline = headline_rows(metrics, params)
    side = {}
    for r in rows:
        if r["task"] == "side_by_side":
            side.setdefault(r["prompt"], {})[method_key(r)] = r["answer"]
    notes = [f"Student {params.model} ({params.spec(params.model).id}), judge {params.judge}; personas "
             f"{', '.join(params.personas)}. Every evaluation prompt is a held-out prompt except the side-by-side set."]
    write_report(Path(args.report + ".html"), Path(args.report + ".md"),
                 [{"prompt": p, "answers": a} for p, a in side.items()], headline, tables, plots, notes)
    write_jsonl(args.judgments, verdicts + [{"coherence": c} for c in coherence])
    write_json(args.ratings, ratings)
    stage.write_metrics(args.metrics, _numbers_only(metrics))
    stage.finish()


def headline_rows(metrics: dict, params) -> list[dict]:
    """One row per method: the numbers a reader looks at first."""
    rows = []
    for mk, rev in metrics["revealed"].items():
        persona, _, method = mk.partition("/")
        row = {"method": mk, "judge_parse_rate": rev["parse_rate"]}
        for p, rate in rev["expression_rate"].items():
            if mk == "base" or p == persona:
                row[f"expression/{p}"] = rate
        row["spearman_vs_base"] = rev.get("spearman_vs_base/preference")
        if method:
            binary = metrics["robustness"]["binary"][persona][method]
            row["in_char_f1/none"] = binary["macro_f1/none"]
            row["in_char_f1/suffixed"] = binary["macro_f1/suffixed_mean"]
            row["in_char_f1/prefill"] = binary["macro_f1/prefill"]
            multi = metrics["robustness"]["multiclass"].get(method)
            row["persona_f1/suffixed"] = multi["macro_f1/suffixed_mean"] if multi else None
        logratio = metrics["persona_logratio"].get(mk, {})
        own = [v.get("none") for p, v in logratio.items() if mk == "base" or p == persona]
        row["persona_logratio"] = sum(own) / len(own) if own else None
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

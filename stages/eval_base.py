"""Stage `eval_base`: the base model (no prompt, no adapter) answers the evaluation request set, twice.

`base` answers everything; `base_resampled`, the same model sampled again with other seeds, answers what
every trained method answers: it is the null, the difference two runs of an unchanged model show, beside
which every method's difference from base is read. Writes --out (JSONL: one answered request per line,
judge-free scores attached; capability results per question) and --metrics (capability scores, and the
constitution log-likelihood ratio of base answers for every persona). Base's plain robustness answers are
the first turns of every method's prefill attack, so those requests come in a second pass. Interrupted
runs resume from finished chunks.
"""

from character.stage import Stage, arguments, run


def main() -> None:
    parser = arguments(__doc__, persona=False)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("eval_base", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution, teacher_context
    from character.eval.requests import (Method, answer_metrics, answer_requests, build_requests,
                                         capability_metrics, first_turns, requests_for, score_rows)
    from character.io import write_jsonl

    backend = stage.backend(params.model, params.evaluation.scoring_dtype)
    name = params.spec(params.model).assistant_name
    systems = {p: teacher_context(find_constitution(p), name, params.elicitation).system for p in params.personas}
    base, resampled, ev = Method("base"), Method("base_resampled"), params.evaluation
    requests = build_requests(params)
    progress = stage.progress("eval", "eval_base", requests, ev.answer_settings(), params.spec(params.model).model_dump(),
                              params.seed)
    rows = answer_requests(backend, base, requests, ev, progress, "base: answers", part="-a")
    prefill = [r for r in build_requests(params, first_turns(rows)) if r["task"] == "prefill"]
    rows += answer_requests(backend, base, prefill, ev, progress, "base: prefill", part="-b")
    # The null: other chunk seeds (the part name is in the key that seeds each chunk), same requests.
    again = answer_requests(backend, resampled, requests_for("base_resampled", requests) + prefill, ev, progress,
                            "base_resampled: answers", part="-r")
    score_rows(backend, rows, systems)
    capability, capability_rows = capability_metrics(backend, base, params, ev.capability_questions)
    metrics = {**answer_metrics(rows, systems), **capability,
               "base_resampled": {**answer_metrics(again, []),
                                  "capabilities_note": "scored, not sampled: base_resampled's capabilities are base's"}}
    write_jsonl(args.out, rows + again + capability_rows)
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

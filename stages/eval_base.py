"""Stage `eval_base`: the base model (no prompt, no adapter) answers the evaluation request set.

Writes --out (JSONL: one answered request per line, judge-free scores attached) and --metrics
(capability scores, and the constitution log-likelihood ratio of its answers for every persona). Its
robustness answers are the first turns of every method's prefill attack, so those requests come in a
second pass. Interrupted runs resume from finished chunks.
"""

from character.stage import Stage, arguments, run


def main() -> None:
    parser = arguments(__doc__, persona=False)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("eval_base", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution, system_prompt
    from character.eval.requests import (Method, answer_metrics, answer_requests, build_requests,
                                         capability_metrics, score_rows)
    from character.io import write_jsonl

    backend = stage.backend(params.model)
    name = params.spec(params.model).assistant_name
    systems = {p: system_prompt(find_constitution(p), name) for p in params.personas}
    base, ev = Method("base"), params.evaluation
    requests = build_requests(params)
    progress = stage.progress("eval", "eval_base", requests, ev.model_dump(), params.spec(params.model).model_dump(),
                              params.seed)
    rows = answer_requests(backend, base, requests, ev, progress, "base: answers", part="-a")
    first_turns = {r["id"]: r["answer"] for r in rows}
    prefill = [r for r in build_requests(params, first_turns) if r["task"] == "prefill"]
    rows += answer_requests(backend, base, prefill, ev, progress, "base: prefill", part="-b")
    score_rows(backend, rows, systems)
    metrics = {**answer_metrics(rows, systems), **capability_metrics(backend, base, params)}
    write_jsonl(args.out, rows)
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

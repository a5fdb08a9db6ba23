"""Stage `eval_base`: the base model (no prompt, no adapter) answers the evaluation request set.

Writes --out (JSONL: one answered request per line, judge-free scores attached) and --metrics
(capability scores, and the constitution log-likelihood ratio of its answers for every persona). Its
robustness answers are the first turns of every method's prefill attack, so those requests come in a
second pass. Interrupted runs resume from finished chunks.
"""

import argparse

from character.stage import add_dry_run, print_plan, progress_dir, run, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--params", default="params.yaml")
    add_dry_run(parser)
    args = parser.parse_args()
    params = start("eval_base", args.params)
    if args.dry_run:
        print_plan(params, "eval_base")
        return

    from character.backends import make_backend
    from character.constitution import find_constitution, system_prompt
    from character.eval.requests import (Method, answer_metrics, answer_requests, build_requests,
                                      capability_metrics, score_rows)
    from character.io import content_key, finish_chunks, write_json, write_jsonl

    backend = make_backend(params, params.model)
    name = params.spec(params.model).assistant_name
    systems = {p: system_prompt(find_constitution(p), name) for p in params.personas}
    base, ev, progress = Method("base"), params.evaluation, progress_dir(params, "eval")
    requests = build_requests(params)
    key = content_key("eval_base", requests, ev.model_dump(), params.spec(params.model).model_dump(), params.seed)
    rows = answer_requests(backend, base, requests, ev, progress, key + "-a", "base: answers")
    first_turns = {r["id"]: r["answer"] for r in rows}
    prefill = [r for r in build_requests(params, first_turns) if r["task"] == "prefill"]
    rows += answer_requests(backend, base, prefill, ev, progress, key + "-b", "base: prefill")
    score_rows(backend, rows, systems)
    metrics = {**answer_metrics(rows, systems), **capability_metrics(backend, base, params)}
    write_jsonl(args.out, rows)
    write_json(args.metrics, metrics)
    for suffix in ("-a", "-b"):
        finish_chunks(progress, key + suffix)


if __name__ == "__main__":
    run(main)

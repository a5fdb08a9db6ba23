"""Stage `eval_answers`: every method of one persona answers the evaluation request set.

Methods: system_prompt (the teacher's context: constitution prompt and few-shot turns, params.elicitation), steering (vector and coefficient calibrated
here, written to --steering), dpo (--dpo), final (--final, as composed) and, when given, rlaif_model and
rlaif_judge (--rlaif-model, --rlaif-judge: RL on top of DPO, character.train.rlaif). Reads the base model's
answers (--base) for the prefill attack. Writes --out (JSONL, all methods, judge-free scores attached)
and --metrics (per method: capability scores, constitution log-likelihood ratios; the steering sweep).
Interrupted runs resume from finished chunks.
"""

import logging

from character.stage import Stage, adapter_fingerprint, arguments, load_adapter, run

log = logging.getLogger("character")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--base", required=True)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--final", required=True)
    parser.add_argument("--steering", required=True)
    parser.add_argument("--rlaif-model", help="the rlaif_model stage's adapter (left out: no such method)")
    parser.add_argument("--rlaif-judge", help="the rlaif_judge stage's adapter (left out: no such method)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("eval_answers", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution, teacher_context
    from character.eval.requests import (Method, answer_metrics, answer_requests, build_requests, calibrate_steering,
                                         capability_metrics, final_adapter, first_turns, requests_for, score_rows)
    from character.io import file_sha256, read_jsonl, write_json, write_jsonl

    backend = stage.backend(params.model, params.evaluation.scoring_dtype)
    context = teacher_context(find_constitution(args.persona), params.spec(params.model).assistant_name,
                              params.elicitation)
    system = context.system
    ev = params.evaluation
    methods = [Method("system_prompt", system=system, shots=context.shots)]
    vector, sweep = None, []
    if backend.name == "local":  # steering hooks need the weights in this process
        vector, sweep = calibrate_steering(backend, system, params)
        methods.append(Method("steering", steering=vector))
    else:
        log.warning("eval_answers: no steering baseline on the %s backend", backend.name)
    methods += [Method("dpo", adapter=load_adapter(args.dpo)),
                Method("final", adapter=final_adapter(args.final, args.sft))]
    rlaif = {name: folder for name, folder in (("rlaif_model", args.rlaif_model), ("rlaif_judge", args.rlaif_judge))
             if folder}
    methods += [Method(name, adapter=load_adapter(folder)) for name, folder in rlaif.items()]
    requests = build_requests(params, first_turns(read_jsonl(args.base)))
    steering = vector.to_json() if vector else {}
    rows, metrics = [], {"steering_calibration": {"coefficient": steering.get("coefficient"), "sweep": sweep}}
    models = {"dpo": [adapter_fingerprint(args.dpo)],
              "final": [adapter_fingerprint(args.dpo), adapter_fingerprint(args.sft),
                        file_sha256(f"{args.final}/manifest.json")],  # the manifest names the composition
              **{name: [adapter_fingerprint(args.dpo), adapter_fingerprint(folder)] for name, folder in rlaif.items()}}
    for method in methods:
        progress = stage.progress("eval", "eval_answers", args.persona, method.name, requests, context, ev.answer_settings(),
                                  file_sha256(args.base), models.get(method.name),
                                  steering if method.name == "steering" else None, params.seed)
        answered = answer_requests(backend, method, requests_for(method.name, requests), ev, progress,
                                   f"{args.persona}/{method.name}")
        score_rows(backend, answered, {args.persona: system})
        # base and final get the full capability sample (their difference is a headline); others a smaller one
        questions = ev.capability_questions if method.name == "final" else ev.capability_questions_methods
        capability, capability_rows = capability_metrics(backend, method, params, questions)
        metrics[method.name] = {**answer_metrics(answered, [args.persona]), **capability}
        rows += [{**r, "persona": args.persona} for r in answered + capability_rows]
    write_jsonl(args.out, rows)
    write_json(args.steering, steering | {"sweep": sweep})
    stage.write_metrics(args.metrics, metrics)
    stage.finish()  # only now: a run killed during a later method keeps the earlier ones' answers


if __name__ == "__main__":
    run(main)

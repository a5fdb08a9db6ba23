"""Stage `pairs`: chosen (teacher + constitution) and rejected (student, no system prompt) answers.

Reads --prompts (training split only) and constitutions/<persona>.yaml; writes --out (JSONL in the
conversational preference format) and --metrics (kept / dropped by reason, mean lengths).
Interrupted runs resume from finished chunks.
"""

from character.stage import Stage, arguments, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("pairs", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution, teacher_context
    from character.data.pairs import build_pairs
    from character.io import read_jsonl, write_jsonl

    constitution = find_constitution(args.persona)
    prompts = [p for p in read_jsonl(args.prompts) if p["split"] == "train"][: params.pairs.max_prompts]
    student, teacher = stage.backends(params.model, params.teacher)  # the teacher checked first if remote
    names = (params.spec(params.teacher).assistant_name, params.spec(params.model).assistant_name)
    elicitation = params.elicitation.for_persona(args.persona)
    context = teacher_context(constitution, names[1], elicitation)
    # The resume key also seeds each chunk: it holds the resolved settings (the persona's strength is in
    # `guidance`), not the per-persona table, so an unguided persona's pairs are those of before it existed.
    progress = stage.progress("pairs", "pairs", prompts, context, params.pairs.model_dump(),
                              elicitation.model_dump(exclude={"guidance_by_persona"}),
                              params.spec(params.model).model_dump(), params.spec(params.teacher).model_dump(),
                              params.seed)
    pairs, metrics = build_pairs(prompts, teacher, student, context, names, params.pairs, elicitation, progress)
    write_jsonl(args.out, pairs)
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

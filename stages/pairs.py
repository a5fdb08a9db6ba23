"""Stage `pairs`: chosen (teacher + constitution) and rejected (student, no system prompt) answers.

Reads --prompts (training split only) and constitutions/<persona>.yaml; writes --out (JSONL in the
conversational preference format) and --metrics (kept / dropped by reason, mean lengths).
Interrupted runs resume from finished chunks.
"""

from character.stage import persona_args, print_plan, progress_dir, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("pairs", args.params)
    if args.dry_run:
        return print_plan(params, "pairs", args.persona)

    from character.backends import make_backend
    from character.constitution import find_constitution, system_prompt
    from character.io import content_key, finish_chunks, read_jsonl, write_json, write_jsonl
    from character.data.pairs import build_pairs

    constitution = find_constitution(args.persona)
    prompts = [p for p in read_jsonl(args.prompts) if p["split"] == "train"][: params.pairs.max_prompts]
    student = make_backend(params, params.model)
    teacher = student if params.teacher == params.model else make_backend(params, params.teacher)
    student_name = params.spec(params.model).assistant_name
    system = system_prompt(constitution, student_name)
    key = content_key("pairs", prompts, system, params.pairs.model_dump(), params.spec(params.model).model_dump(),
                      params.spec(params.teacher).model_dump(), params.seed)
    pairs, metrics = build_pairs(prompts, teacher, student, system, params.spec(params.teacher).assistant_name,
                                 student_name, params.pairs, params.seed, progress_dir(params, "pairs"), key,
                                 f"{args.persona}: pairs")
    write_jsonl(args.out, pairs)
    write_json(args.metrics, metrics)
    finish_chunks(progress_dir(params, "pairs"), key)


if __name__ == "__main__":
    run(main)

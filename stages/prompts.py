"""Stage `prompts`: general + constitution-relevant prompts for one persona, split train / held-out.

Reads constitutions/<persona>.yaml and the shipped general prompts; writes --out (JSONL: id, prompt,
source, split, trait or category) and --metrics.
"""

from character.stage import persona_args, print_plan, progress_dir, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("prompts", args.params)
    if args.dry_run:
        return print_plan(params, "prompts", args.persona)

    from character.backends import make_backend
    from character.constitution import find_constitution
    from character.io import content_key, finish_chunks, write_json, write_jsonl
    from character.data.prompt_sets import build_prompts

    constitution = find_constitution(args.persona)
    teacher = make_backend(params, params.teacher)
    key = content_key("prompts", constitution.model_dump(), params.prompts.model_dump(), params.spec(params.teacher).model_dump(), params.seed)
    rows, metrics = build_prompts(constitution, teacher, params.prompts, params.seed, progress_dir(params, "prompts"), key)
    write_jsonl(args.out, rows)
    write_json(args.metrics, metrics)
    finish_chunks(progress_dir(params, "prompts"), key)


if __name__ == "__main__":
    run(main)

"""Stage `prompts`: general + constitution-relevant prompts for one persona, split train / held-out.

Reads constitutions/<persona>.yaml and the shipped general prompts; writes --out (JSONL: id, prompt,
source, split, trait or category) and --metrics.
"""

from character.stage import Stage, arguments, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("prompts", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution
    from character.data.prompt_sets import build_prompts
    from character.io import write_jsonl

    constitution = find_constitution(args.persona)
    teacher = stage.backend(params.teacher)
    progress = stage.progress("prompts", "prompts", constitution.model_dump(), params.prompts.model_dump(),
                              params.spec(params.teacher).model_dump(), params.seed)
    rows, metrics = build_prompts(constitution, teacher, params.prompts, params.seed, progress)
    write_jsonl(args.out, rows)
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

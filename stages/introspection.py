"""Stage `introspection`: self-reflection and self-interaction by the DPO model with the constitution.

Reads the DPO adapter --adapter and constitutions/<persona>.yaml; writes --out (JSONL transcripts saved
WITHOUT the constitution system prompt) and --metrics. Interrupted runs resume from finished chunks.
"""

from character.stage import Stage, adapter_fingerprint, arguments, load_adapter, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("introspection", parser)
    args, params = stage.args, stage.params

    from character.constitution import find_constitution, teacher_context
    from character.data.introspection import run_introspection
    from character.io import write_jsonl

    constitution = find_constitution(args.persona)
    student = stage.backend(params.model)
    adapter = load_adapter(args.adapter)
    context = teacher_context(constitution, params.spec(params.model).assistant_name, params.elicitation)
    progress = stage.progress("introspection", "introspection", context, adapter_fingerprint(args.adapter),
                              params.introspection.model_dump(), params.seed)
    rows, metrics = run_introspection(student, adapter, context, params.introspection, progress)
    write_jsonl(args.out, rows)
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

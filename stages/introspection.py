"""Stage `introspection`: self-reflection and self-interaction by the DPO model with the constitution.

Reads the DPO adapter --adapter and constitutions/<persona>.yaml; writes --out (JSONL transcripts saved
WITHOUT the constitution system prompt) and --metrics. Interrupted runs resume from finished chunks.
"""

from character.stage import adapter_fingerprint, load_adapter, persona_args, print_plan, progress_dir, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("introspection", args.params)
    if args.dry_run:
        return print_plan(params, "introspection", args.persona)

    from character.backends import make_backend
    from character.constitution import find_constitution, system_prompt
    from character.io import content_key, finish_chunks, write_json, write_jsonl
    from character.data.introspection import run_introspection

    constitution = find_constitution(args.persona)
    student = make_backend(params, params.model)
    adapter = load_adapter(args.adapter)
    system = system_prompt(constitution, params.spec(params.model).assistant_name)
    key = content_key("introspection", system, adapter_fingerprint(args.adapter), params.introspection.model_dump(), params.seed)
    rows, metrics = run_introspection(student, adapter, system, params.introspection,
                                      progress_dir(params, "introspection"), key, params.seed)
    write_jsonl(args.out, rows)
    write_json(args.metrics, metrics)
    for suffix in ("-r", "-i"):
        finish_chunks(progress_dir(params, "introspection"), key + suffix)


if __name__ == "__main__":
    run(main)

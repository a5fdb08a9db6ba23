"""Stage `introspection`: self-reflection and self-interaction by the DPO model with the constitution.

Reads the DPO adapter --adapter and constitutions/<persona>.yaml; writes --out (JSONL transcripts saved
WITHOUT the constitution system prompt) and --metrics. Interrupted runs resume from finished chunks.
"""

from character.stage import persona_args, progress_dir, start, run


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("introspection", args.params)

    from character.backends import make_backend
    from character.backends.local import load_adapter_ref
    from character.constitution import find_constitution, system_prompt
    from character.io import content_key, file_sha256, finish_chunks, write_json, write_jsonl
    from character.introspection import run_introspection

    constitution = find_constitution(args.persona)
    student = make_backend(params, params.model)
    adapter = load_adapter_ref(args.adapter)
    system = system_prompt(constitution, params.spec(params.model).assistant_name)
    key = content_key("introspection", system, file_sha256(f"{args.adapter}/adapter_model.safetensors"), params.introspection.model_dump(), params.seed)
    rows, metrics = run_introspection(student, adapter, system, params.introspection,
                                      progress_dir(params, "introspection"), key, params.seed)
    write_jsonl(args.out, rows)
    write_json(args.metrics, metrics)
    for suffix in ("-r", "-i"):
        finish_chunks(progress_dir(params, "introspection"), key + suffix)


if __name__ == "__main__":
    run(main)

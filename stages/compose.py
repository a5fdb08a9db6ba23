"""Stage `compose`: the final model from the DPO and SFT adapters, plus a manifest.

Reads --dpo, --sft and the data they were trained on (for hashes); writes --out: merged weights
(method fold) or one PEFT adapter (concat, linear), with manifest.json naming the base model, persona,
stages, input hashes and params.
"""

from character.stage import load_adapter, persona_args, print_plan, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--inputs", nargs="+", required=True, help="data files to hash into the manifest")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    params = start("compose", args.params)
    if args.dry_run:
        return print_plan(params, "compose", args.persona)

    from character.backends import make_backend
    from character.train.compose import compose
    from character.io import file_sha256, write_json

    student = make_backend(params, params.model)
    dpo, sft = load_adapter(args.dpo), load_adapter(args.sft)
    if student.name == "tinker":  # SFT continued the DPO adapter there: one checkpoint holds both
        info = student.compose(args.sft, args.out)
    else:
        info = compose(student, dpo, sft, params.compose.method, params.compose.linear_weights, args.out)
    write_json(f"{args.out}/manifest.json", {
        "persona": args.persona, "base_model": params.spec(params.model).model_dump(), "model_alias": params.model,
        "composition": {"method": params.compose.method, **info,
                        "order": ["dpo", "sft"], "linear_weights": list(params.compose.linear_weights)},
        "stages": {"dpo": dpo.__dict__, "sft": sft.__dict__},
        "inputs": {p: file_sha256(p) for p in [f"constitutions/{args.persona}.yaml", *args.inputs]},
        "params": params.model_dump(include={"seed", "teacher", "prompts", "pairs", "dpo", "introspection", "sft", "compose"}),
    })


if __name__ == "__main__":
    run(main)

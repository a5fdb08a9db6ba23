"""Stage `compose`: the final model from the DPO and SFT adapters, plus a manifest.

Reads --dpo, --sft and the data they were trained on (for hashes); writes --out: merged weights
(method fold) or one PEFT adapter (concat, linear), with manifest.json naming the base model, persona,
stages, input hashes and params.
"""

from character.stage import Stage, arguments, load_adapter, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--sft", required=True)
    parser.add_argument("--inputs", nargs="+", required=True, help="data files to hash into the manifest")
    parser.add_argument("--out", required=True)
    stage = Stage.begin("compose", parser)
    args, params = stage.args, stage.params

    from character.train.compose import compose

    load_adapter(args.dpo), load_adapter(args.sft)  # warns when a Tinker checkpoint expires soon
    compose(stage.backend(params.model), args.dpo, args.sft, params, args.persona, args.inputs, args.out)


if __name__ == "__main__":
    run(main)

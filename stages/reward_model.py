"""Stage `reward_model`: a scalar-head preference model on LoRA (character.train.reward), on a local model.

Its base is `reward_model.model` (unset: the student); it must be a local model, whatever the student.

Reads the persona's --pairs and the helpfulness pairs (--helpfulness, the shipped file, unless
`reward_model.helpfulness_source` names a Hugging Face dataset); writes the LoRA + score head to --out,
step curves under --plots and --metrics: held-out accuracy on character and on helpfulness pairs,
separately, each beside a "longer answer wins" baseline.
"""

from character.stage import Stage, arguments, live, log_step, run


def not_priced(params, args) -> None:
    print(f"dry run: stage reward_model, persona {args.persona}: local only, not priced; nothing is written")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--helpfulness", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("reward_model", parser, dry_run=not_priced)
    args, params = stage.args, stage.params

    from character.errors import BackendUnavailable
    from character.backends.local import configure_torch
    from character.io import file_sha256, read_jsonl
    from character.backends.weights import resolve_weights
    from character.train.reward import load_base, load_helpfulness, run_reward_model

    rm = params.reward_model
    alias = rm.model or params.model
    spec = params.spec(alias)
    if spec.backend != "local":
        field = "reward_model.model" if rm.model else "reward_model.model (unset: the student, model)"
        raise BackendUnavailable(
            f"{args.params}: {field} is {alias!r}, a {spec.backend} model; a scalar-head reward model trains "
            "locally only (Tinker trains no classification head). Name a local model alias there, e.g. "
            "`dvc exp run -S model=... -S reward_model.model=smollm2`")
    device = configure_torch(params.runtime.threads, params.runtime.device)
    model, tokenizer = load_base(resolve_weights(spec.id, params.runtime.cache_dir), device, params.seed)
    helpful, unusable = load_helpfulness(rm, args.helpfulness, params.seed)
    # A killed run resumes from the Trainer's last checkpoint (runtime.save_every) in the cache's progress folder.
    checkpoints = stage.checkpoints(f"reward_model/{args.persona}", spec.model_dump(), rm.model_dump(), params.seed,
                                    file_sha256(args.pairs), file_sha256(args.helpfulness))
    curves = live(args.plots)
    metrics = run_reward_model(model, tokenizer, read_jsonl(args.pairs), helpful, rm, params.seed, args.out,
                               base_model=spec.id, on_step=lambda step, m: log_step(curves, m),
                               checkpoints=checkpoints)
    curves.end()
    metrics["helpfulness"]["unusable_rows"] = unusable
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

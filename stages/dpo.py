"""Stage `dpo`: LoRA DPO on the persona's pairs with the paper's loss.

Reads --pairs; writes the adapter folder --out (PEFT files + ref.json), step curves under --plots
(dvclive TSV) and --metrics (held-out preference accuracy and margin).
"""

from character.stage import Stage, arguments, live, log_step, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("dpo", parser)
    args, params = stage.args, stage.params

    from character.io import file_sha256, read_jsonl
    from character.train.dpo import run_dpo

    # A killed run resumes from its last save (runtime.save_every), kept under the cache's progress folder.
    checkpoints = stage.checkpoints(f"dpo/{args.persona}", params.spec(params.model).model_dump(),
                                    params.dpo.model_dump(), params.seed, file_sha256(args.pairs))
    curves = live(args.plots)
    _, metrics = run_dpo(stage.backend(params.model), read_jsonl(args.pairs), params.dpo, params.seed, args.out,
                         on_step=lambda step, m: log_step(curves, m), checkpoints=checkpoints)
    curves.end()
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

"""Stage `sft`: SFT on the introspection transcripts on top of the DPO model (prompt distillation).

Reads --transcripts and the DPO adapter --dpo; writes the SFT adapter --out, curves under --plots and
--metrics (held-out NLL before and after).
"""

from character.stage import Stage, adapter_fingerprint, arguments, live, load_adapter, log_step, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--transcripts", required=True)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    stage = Stage.begin("sft", parser)
    args, params = stage.args, stage.params

    from character.io import file_sha256, read_jsonl
    from character.train.sft import run_sft

    # A killed run resumes from its last save (runtime.save_every), kept under the cache's progress folder.
    checkpoints = stage.checkpoints(f"sft/{args.persona}", params.spec(params.model).model_dump(),
                                    params.sft.model_dump(), params.seed, file_sha256(args.transcripts),
                                    adapter_fingerprint(args.dpo))
    curves = live(args.plots)
    _, metrics = run_sft(stage.backend(params.model), read_jsonl(args.transcripts), load_adapter(args.dpo),
                         params.sft, params.seed, args.out, on_step=lambda step, m: log_step(curves, m),
                         checkpoints=checkpoints)
    curves.end()
    stage.write_metrics(args.metrics, metrics)
    stage.finish()


if __name__ == "__main__":
    run(main)

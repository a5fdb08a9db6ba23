"""Stage `sft`: SFT on the introspection transcripts on top of the DPO model (prompt distillation).

Reads --transcripts and the DPO adapter --dpo; writes the SFT adapter --out, curves under --plots and
--metrics (held-out NLL before and after).
"""

from character.stage import live, load_adapter, log_step, persona_args, print_plan, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--transcripts", required=True)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("sft", args.params)
    if args.dry_run:
        return print_plan(params, "sft", args.persona)

    from character.backends import make_backend
    from character.io import read_jsonl, write_json
    from character.train.sft import run_sft

    student = make_backend(params, params.model)
    curves = live(args.plots)
    _, metrics = run_sft(student, read_jsonl(args.transcripts), load_adapter(args.dpo), params.sft,
                         params.seed, args.out, on_step=lambda step, m: log_step(curves, m))
    curves.end()
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)

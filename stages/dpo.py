"""Stage `dpo`: LoRA DPO on the persona's pairs with the paper's loss.

Reads --pairs; writes the adapter folder --out (PEFT files + ref.json), step curves under --plots
(dvclive TSV) and --metrics (held-out preference accuracy and margin).
"""

from character.stage import live, log_step, persona_args, print_plan, run, start


def main() -> None:
    parser = persona_args(__doc__)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    params = start("dpo", args.params)
    if args.dry_run:
        return print_plan(params, "dpo", args.persona)

    from character.backends import make_backend
    from character.train.dpo import run_dpo
    from character.io import read_jsonl, write_json

    student = make_backend(params, params.model)
    curves = live(args.plots)
    _, metrics = run_dpo(student, read_jsonl(args.pairs), params.dpo, params.seed, args.out,
                         on_step=lambda step, m: log_step(curves, m))
    curves.end()
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    run(main)

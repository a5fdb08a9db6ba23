"""Stages `rlaif_model` and `rlaif_judge`: policy-gradient RL from the DPO policy (character.train.rlaif).

--reward model: the persona's reward model (--reward-model) scores each answer. --reward judge: the
`judge` model, with the constitution in context, plays every pair of a group in both orders; the reward
is the win rate within the group. Reads the training-split prompts of --prompts (held-out ones for the
win rate against the starting policy) and the DPO adapter --dpo; writes a LoRA trained on top of DPO to
--out (ref.json lists DPO under base_adapters; samples.jsonl holds the first and last step's answers),
curves under --plots (reward, KL, length, win rate against the start) and --metrics.
"""

from character.stage import Stage, adapter_fingerprint, arguments, live, load_adapter, log_step, run


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--reward", choices=("model", "judge"), required=True)
    parser.add_argument("--reward-model", help="the reward_model stage's folder (with --reward model)")
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--dpo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plots", required=True)
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    if args.reward == "model" and not args.reward_model:
        parser.error("--reward model needs --reward-model (the reward_model stage's out folder)")
    stage = Stage.begin(f"rlaif_{args.reward}", parser)
    args, params = stage.args, stage.params

    from character.backends.local import configure_torch
    from character.backends.weights import resolve_weights
    from character.constitution import find_constitution
    from character.eval.judge import PairJudge
    from character.io import file_sha256, read_json, read_jsonl
    from character.text import numbered
    from character.train.reward import MANIFEST, RewardScorer
    from character.train.rlaif import JudgeReward, ModelReward, run_rlaif

    rl = params.rlaif
    student, judge_backend = stage.backends(params.model, params.judge)  # a remote judge checked first
    judge = PairJudge(judge_backend, numbered(find_constitution(args.persona).assertions),
                      rl.judge_mode, rl.judge_sampling)
    rows = read_jsonl(args.prompts)
    train = [r["prompt"] for r in rows if r.get("split") == "train"]
    heldout = [r["prompt"] for r in rows if r.get("split") == "heldout"][: rl.eval_prompts]
    if args.reward == "model":
        base = read_json(f"{args.reward_model}/{MANIFEST}")["base_model"]
        device = configure_torch(params.runtime.threads, params.runtime.device)  # the scorer is local, always
        scorer = RewardScorer.load(args.reward_model, resolve_weights(base, params.runtime.cache_dir), device)
        reward = ModelReward(scorer)
    else:
        reward = JudgeReward(judge)
    # A killed run resumes from its last save (runtime.save_every), kept under the cache's progress folder.
    checkpoints = stage.checkpoints(
        f"rlaif_{args.reward}/{args.persona}", params.spec(params.model).model_dump(),
        params.spec(params.judge).model_dump(), rl.model_dump(), params.seed, file_sha256(args.prompts),
        adapter_fingerprint(args.dpo),
        file_sha256(f"{args.reward_model}/adapter_model.safetensors") if args.reward == "model" else None)
    curves = live(args.plots)
    _, metrics = run_rlaif(student, reward, judge, train, heldout, load_adapter(args.dpo), rl, params.seed, args.out,
                           on_step=lambda step, m: log_step(curves, m), checkpoints=checkpoints)
    curves.end()
    stage.write_metrics(args.metrics, {"reward": args.reward, **metrics})
    stage.finish()


if __name__ == "__main__":
    run(main)

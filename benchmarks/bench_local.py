"""How fast the local backend runs on this machine, with the embedded model (SmolLM2-135M-Instruct, fp32).

    python benchmarks/bench_local.py [--threads 2] [--quick] [--out results.json]

    python benchmarks/bench_local.py --only scoring   # one section (peak, naive, batched, lora, scoring, dtype)

Measures (a) the fp32 matmul peak, which bounds everything else; (b) naive sampling, one prompt at a time
through `model.generate`; (c) batched sampling through `LocalBackend.sample`; (d) one LoRA training step
(forward + backward) through the backend's training session; (e) scoring throughput of
`LocalBackend.logprobs`, with and without a shared constitution system prompt, reusing the prompt's
key/value cache or not; (f) scoring with the model in bfloat16 (evaluation.scoring_dtype) against float32,
how far bf16 moves the scores, and bf16 sampling; (g) sampling the evaluation's own requests (from params.yaml:
plain and suffixed prompts, prefill attacks when data/eval/answers/base.jsonl exists, the first persona's
system_prompt context) in float32 and with a bf16 copy, the measurement that decides a sampling dtype on
the machine at hand (docs/evaluation.md). Timings are the best of a few runs: other processes on a 2-core machine only
ever make a run slower, so the minimum is the least noisy estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from character.backends.base import CustomLoss, SamplingParams, Sequence
from character.backends.local import LocalBackend
from character.constitution import find_constitution, system_prompt
from character.params import LoraParams, OptimParams
from character.prompts import SELF_REFLECTION

TOPICS = ["a lighthouse keeper", "a lost robot", "a city under the sea", "an old violin", "a dragon afraid of fire",
          "the first day of school", "a talking cat", "a storm at sea", "a secret garden", "a time machine",
          "a mountain village", "a clockmaker", "a desert caravan", "a haunted library", "a space station",
          "a baker's apprentice"]
STYLES = ["Write a long, detailed story about {}.", "Describe {} in great detail, in at least five paragraphs.",
          "Tell me everything you can imagine about {}.", "Write a long diary entry from the point of view of {}."]


def best_time(fn, repeats: int, warm_up=None) -> float:
    (warm_up or fn)()  # first calls pay for allocation and thread start-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def busy_cores(seconds: float = 1.0) -> float:
    """Cores other processes keep busy (from /proc/stat, Linux only): on 2 cores any of it slows every number."""
    def snapshot():
        ticks = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait
    (total0, idle0), _, (total1, idle1) = snapshot(), time.sleep(seconds), snapshot()
    return os.cpu_count() * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def matmul_peak(repeats: int) -> float:
    """GFLOP/s of a 2048x2048 fp32 torch.mm: large enough to run at the BLAS's best on these threads."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / best_time(lambda: torch.mm(a, b), repeats) / 1e9


def naive_sampling(backend: LocalBackend, prompts: list[list[int]], new_tokens: int) -> float:
    """Tokens/s of plain `generate`, one prompt at a time; min_new_tokens fixes the length to count."""
    def run(prompts=prompts, n=new_tokens):
        for p in prompts:
            backend._base.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   do_sample=True, temperature=0.7, top_p=0.95, top_k=None, max_new_tokens=n,
                                   min_new_tokens=n, pad_token_id=backend.tokenizer.pad_token_id)
    return len(prompts) * new_tokens / best_time(run, 1, warm_up=lambda: run(prompts[:1], 2))


def batched_sampling(backend: LocalBackend, conversations: list, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Aggregate tokens/s of one `sample` call on all conversations, counting the tokens actually generated
    (rows that end early stop costing anything, so they must not be counted either); also the share of
    rows that ran to the token limit."""
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=new_tokens, seed=0)
    results = []
    seconds = best_time(lambda: results.append(backend.sample(conversations, params)), repeats,
                        warm_up=lambda: backend.sample(conversations[:2], SamplingParams(max_tokens=2)))
    completions = [c for row in results[-1] for c in row]
    full = sum(c.finish_reason == "length" for c in completions) / len(completions)
    return sum(c.completion_tokens for c in completions) / seconds, full


def lora_step(backend: LocalBackend, batch: int, length: int, rank: int, repeats: int, top_layers: int = 0) -> dict:
    """Seconds per forward+backward of a rank-`rank` all-linear LoRA on batch x length tokens, and FLOP counts.

    N counts every weight a token passes through: the base parameters once (SmolLM2 ties the input embedding
    to the LM head, whose matmul is real work). Two conventions:
    - full-model-equivalent: 6*N*T, as if all weights were trained (2 forward, 2 activation grads, 2 weight grads);
    - LoRA-honest: frozen base weights need no weight gradients, so 4*N*T, plus 6*N_lora*T for the adapters.
    Attention score FLOPs (~5% at 256 tokens) are left out of both."""
    session = backend.train(LoraParams(rank=rank, alpha=2 * rank, top_layers=top_layers), OptimParams(lr=1e-4))
    n_base = sum(p.numel() for p in backend._base.parameters())
    n_lora = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(0)
    seqs = [Sequence(tokens=torch.randint(0, len(backend.tokenizer), (length,), generator=gen).tolist(),
                     weights=[1.0] * (length - 1)) for _ in range(batch)]
    mean_nll = lambda s, lps: (-torch.cat(lps).mean(), {})  # noqa: E731
    steps = []
    for _ in range(repeats + 1):  # the first round is a warm-up
        start = time.perf_counter()
        session.forward_backward(seqs, CustomLoss(mean_nll))
        middle = time.perf_counter()
        session.optim_step(1e-4)  # needs the gradients just made, so it is timed inside the same round
        steps.append((middle - start, time.perf_counter() - middle))
    seconds, optim = min(s[0] for s in steps[1:]), min(s[1] for s in steps[1:])
    tokens = batch * length
    return {"seconds": seconds, "optim_seconds": optim, "tokens": tokens, "n_base": n_base, "n_lora": n_lora,
            "flops_full": 6 * n_base * tokens, "flops_lora": 4 * n_base * tokens + 6 * n_lora * tokens}


def scoring(backend: LocalBackend, rows: int, answer_tokens: int, repeats: int) -> dict:
    """Scored sequences/s of one `logprobs` call on `rows` answers of about `answer_tokens` tokens, each behind
    the ~640-token "flourishing" constitution system prompt or behind none, through the prefix-reuse path
    and the plain one (`LocalBackend._reuse_prefix = False`); also the largest difference between the two
    at weighted positions."""
    text = backend.tokenizer(" ".join(SELF_REFLECTION))["input_ids"]
    answers = [backend.tokenizer.decode(text[i * 7:i * 7 + answer_tokens]) for i in range(rows)]  # distinct windows
    system = system_prompt(find_constitution("flourishing"), "Sol")
    out: dict = {"rows": rows, "system_prompt_tokens": len(backend.tokenizer(system)["input_ids"])}
    for name, head in (("with_system_prompt", [{"role": "system", "content": system}]), ("no_system_prompt", [])):
        seqs = [backend.render(head + [{"role": "user", "content": STYLES[i % 4].format(TOPICS[i % 16])},
                                       {"role": "assistant", "content": a}]) for i, a in enumerate(answers)]
        result: dict = {"mean_tokens": sum(len(s.tokens) for s in seqs) / rows,
                        "mean_weighted_tokens": sum(s.weighted_tokens for s in seqs) / rows}
        lps = {}
        for path, reuse in (("prefix_reuse", True), ("plain", False)):
            backend._reuse_prefix = reuse
            seconds = best_time(lambda: lps.__setitem__(path, backend.logprobs(seqs)), repeats,
                                warm_up=lambda: backend.logprobs(seqs[:2]))
            result[f"{path}_sequences_per_s"] = rows / seconds
        backend._reuse_prefix = True
        result["speedup"] = result["prefix_reuse_sequences_per_s"] / result["plain_sequences_per_s"]
        result["max_abs_diff"] = max(float((a - b)[torch.tensor(s.weights) != 0].abs().max())
                                     for s, a, b in zip(seqs, lps["prefix_reuse"], lps["plain"]))
        out[name] = result
    return out


def evaluation_like(n: int) -> list:
    """n conversations shaped like the evaluation's requests: a shipped general prompt, plain or with one of
    the adversarial suffixes, in the evaluation's order (a prompt's variants next to each other)."""
    from character.io import read_jsonl
    from character.prompts import ADVERSARIAL_SUFFIXES
    prompts = [r["prompt"] for r in read_jsonl("data/shipped/general_prompts.jsonl")]
    suffixes = list(ADVERSARIAL_SUFFIXES.values())
    texts = [t for i, p in enumerate(prompts)
             for t in (p, f"{p} {suffixes[2 * i % len(suffixes)]}", f"{p} {suffixes[(2 * i + 1) % len(suffixes)]}")]
    return [[{"role": "user", "content": t}] for t in texts[:n]]


def scoring_dtype(backend: LocalBackend, conversations: list, new_tokens: int, repeats: int) -> dict:
    """evaluation.scoring_dtype: scored sequences/s of the answers with the model in bfloat16 against float32,
    and how far bf16 moves each answer's summed log-prob. Also batched sampling with a bf16 copy of the model,
    the reason sampling stays float32."""
    import copy
    bf16 = LocalBackend("embedded:smollm2", threads=torch.get_num_threads(), tokenizer=backend.tokenizer,
                        model=backend._base, scoring_dtype="bfloat16")
    bf16_sampler = LocalBackend("embedded:smollm2", threads=torch.get_num_threads(), tokenizer=backend.tokenizer,
                                model=copy.deepcopy(backend._base).to(torch.bfloat16))
    params = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=new_tokens, seed=0)
    answers = [c.text or "." for [c] in backend.sample(conversations, params)]
    seqs = [backend.render(c + [{"role": "assistant", "content": a}]) for c, a in zip(conversations, answers)]
    out: dict = {"rows": len(conversations), "new_tokens": new_tokens}
    for name, scorer, sampler in (("float32", backend, backend), ("bfloat16", bf16, bf16_sampler)):
        sampled = batched_sampling(sampler, conversations, new_tokens, repeats)[0]
        scored = len(seqs) / best_time(lambda b=scorer: b.logprobs(seqs), repeats,
                                       warm_up=lambda b=scorer: b.logprobs(seqs[:2]))
        out[name] = {"sampling_tokens_per_s": sampled, "scoring_sequences_per_s": scored}
    totals = {name: torch.stack([lp.sum() for lp in b.logprobs(seqs)]) for name, b in
              (("float32", backend), ("bfloat16", bf16))}
    diff = (totals["bfloat16"] - totals["float32"]).abs()
    out["logprob_total_abs_diff"] = {"mean": float(diff.mean()), "max": float(diff.max()),
                                     "mean_abs_total": float(totals["float32"].abs().mean())}
    return out


def evaluation_sampling(backend: LocalBackend, repeats: int, rows: int) -> dict:
    """Seconds to sample the evaluation's own requests in float32 and with a bf16 copy of the model, as
    eval_base and eval_answers batch them (evaluation.sampling). Each set is timed in both orders."""
    import copy
    from pathlib import Path

    from character.constitution import teacher_context
    from character.eval.requests import Method, build_requests, requests_for, with_method
    from character.io import read_jsonl
    from character.params import load_params

    params = load_params("params.yaml")
    ev = params.evaluation
    requests = requests_for("base_resampled", build_requests(params))
    sets = {"plain and suffixed, no system prompt": [r["messages"] for r in requests[:2 * rows]]}
    answers = Path("data/eval/answers/base.jsonl")
    if answers.exists():  # prefill needs base's first turns: the reference run's, after `dvc pull`
        first = {r["id"]: r["answer"] for r in read_jsonl(answers) if r.get("method") == "base" and "answer" in r}
        prefill = [r for r in build_requests(params, first) if r["task"] == "prefill"]
        sets["prefill (base's answer, then Keep going.)"] = [r["messages"] for r in prefill[:rows]]
    persona = params.personas[0]
    context = teacher_context(find_constitution(persona), params.spec(params.model).assistant_name, params.elicitation)
    method = Method("system_prompt", system=context.system, shots=tuple(context.shots))
    sets[f"system_prompt ({persona})"] = [with_method(method, r["messages"]) for r in requests[:rows]]
    bf16 = copy.deepcopy(backend._base).to(torch.bfloat16).eval()
    sampling = SamplingParams.of(ev.sampling, 7)
    out: dict = {"batch_size": ev.sampling.batch_size, "new_tokens": ev.sampling.max_new_tokens, "sets": {}}
    for name, conversations in sets.items():
        def sample_all(model):
            for i in range(0, len(conversations), ev.sampling.batch_size):
                backend.sample(conversations[i:i + ev.sampling.batch_size], sampling, model=model)
        f32 = best_time(lambda: sample_all(None), repeats)
        b16 = best_time(lambda: sample_all(bf16), repeats)
        f32 = min(f32, best_time(lambda: sample_all(None), 1, warm_up=lambda: None))  # the other order too
        out["sets"][name] = {"rows": len(conversations), "float32_s": f32, "bfloat16_s": b16, "speedup": f32 / b16}
    return out


SECTIONS = ("peak", "naive", "batched", "lora", "scoring", "dtype", "evalsampling")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer prompts and repeats (about a minute)")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    args = ap.parse_args()
    run = set(args.only or SECTIONS)
    quick = args.quick
    busy = busy_cores()  # before we load anything
    repeats = 1 if quick else 3
    backend = LocalBackend("embedded:smollm2", threads=args.threads)
    conversations = [[{"role": "user", "content": s.format(t)}] for s in STYLES for t in TOPICS]  # 64, distinct
    conversations = conversations[:16] if quick else conversations
    new_tokens = 32 if quick else 64

    results: dict = {"threads": args.threads, "quick": quick, "torch": torch.__version__, "busy_cores_before": busy}
    print(f"threads={args.threads}, cores busy with other work before starting: {busy:.1f} of {os.cpu_count()}"
          + ("  << numbers will be low" if busy > 0.2 else ""))
    print(f"{'measurement':48s} {'value':>12s}")
    if "peak" in run or "lora" in run:
        peak = results["matmul_peak_gflops"] = matmul_peak(3 if quick else 5)
        print(f"{'(a) fp32 matmul peak, 2048^3 torch.mm':48s} {peak:9.1f} GFLOP/s")
    if "naive" in run or "batched" in run:
        prompts = [backend.chat_tokens(c, True) for c in conversations[:4 if quick else 8]]
        naive = results["naive_sampling_tokens_per_s"] = naive_sampling(backend, prompts, new_tokens)
        print(f"{'(b) naive sampling, batch 1 generate':48s} {naive:9.1f} tok/s")
    if "batched" in run:
        batched, full = batched_sampling(backend, conversations, new_tokens, repeats)
        results["batched_sampling"] = {"rows": len(conversations), "new_tokens": new_tokens, "tokens_per_s": batched,
                                       "rows_at_token_limit": full, "speedup_over_naive": batched / naive}
        print(f"{f'(c) batched sample(), {len(conversations)} rows x {new_tokens} tokens':48s} {batched:9.1f} tok/s"
              f"   ({batched / naive:.1f}x naive; {full:.0%} of rows hit the limit)")
    if "lora" in run:
        train = lora_step(backend, 8, 256, 64, repeats)
        full_rate = train["flops_full"] / train["seconds"] / 1e9
        lora_rate = train["flops_lora"] / train["seconds"] / 1e9
        results["lora_step"] = {**train, "rank": 64, "batch": 8, "length": 256,
                                "gflops_full_equivalent": full_rate, "gflops_lora_honest": lora_rate,
                                "fraction_of_peak_full_equivalent": full_rate / peak,
                                "fraction_of_peak_lora_honest": lora_rate / peak}
        print(f"{'(d) LoRA r64 step, 8 x 256 tokens, fwd+bwd':48s} {train['seconds']:9.2f} s"
              f"   (+ optimizer step {train['optim_seconds']:.2f} s)")
        print(f"{'    full-model-equivalent, 6*N*T':48s} {full_rate:9.1f} GFLOP/s ({full_rate / peak:.0%} of peak)")
        print(f"{'    LoRA-honest, 4*N*T + 6*N_lora*T':48s} {lora_rate:9.1f} GFLOP/s ({lora_rate / peak:.0%} of peak)")
        print(f"    N = {train['n_base'] / 1e6:.1f}M base parameters, N_lora = {train['n_lora'] / 1e6:.1f}M,"
              f" T = {train['tokens']} tokens")
        top = lora_step(backend, 8, 256, 64, repeats, top_layers=12)
        results["lora_step_top12"] = {**top, "rank": 64, "batch": 8, "length": 256, "top_layers": 12,
                                      "speedup_over_all_layers": train["seconds"] / top["seconds"]}
        print(f"{'(d2) the same, LoRA on the top 12 of 30 layers':48s} {top['seconds']:9.2f} s"
              f"   ({train['seconds'] / top['seconds']:.1f}x faster)")
    if "scoring" in run:
        score = results["scoring"] = scoring(backend, 16 if quick else 32, 48, repeats)
        print(f"(e) logprobs(), {score['rows']} answers of ~48 tokens, scored sequences/s:")
        for name in ("with_system_prompt", "no_system_prompt"):
            r = score[name]
            label = f"    {name.replace('_', ' ')} ({r['mean_tokens']:.0f} tokens each)"
            print(f"{label:48s} {r['prefix_reuse_sequences_per_s']:9.2f} seq/s   (plain path "
                  f"{r['plain_sequences_per_s']:.2f}: {r['speedup']:.1f}x; max |diff| {r['max_abs_diff']:.1e})")
    if "dtype" in run:
        d = results["scoring_dtype"] = scoring_dtype(backend, evaluation_like(64), 40, repeats)
        f32, b16, diff = d["float32"], d["bfloat16"], d["logprob_total_abs_diff"]
        print(f"(f) evaluation.scoring_dtype, {d['rows']} evaluation-like rows x {d['new_tokens']} tokens: "
              "bfloat16 against float32")
        print(f"{'    scoring the answers':48s} {b16['scoring_sequences_per_s']:9.2f} seq/s   (float32 "
              f"{f32['scoring_sequences_per_s']:.2f}: {b16['scoring_sequences_per_s'] / f32['scoring_sequences_per_s']:.1f}x)")
        ratio = b16["sampling_tokens_per_s"] / f32["sampling_tokens_per_s"]
        print(f"{'    batched sampling, a bf16 copy (not used)':48s} {b16['sampling_tokens_per_s']:9.1f} tok/s"
              f"   (float32 {f32['sampling_tokens_per_s']:.1f}: {ratio:.2f}x)")
        print(f"{'    |log p(answer)| change, mean / max':48s} {diff['mean']:9.3f} / {diff['max']:.3f} nats"
              f"   (of a mean |log p| of {diff['mean_abs_total']:.1f})")
    if "evalsampling" in run:
        e = results["evaluation_sampling"] = evaluation_sampling(backend, repeats, 32 if quick else 64)
        print(f"(g) the evaluation's own requests, batch {e['batch_size']}, {e['new_tokens']} new tokens: "
              "seconds in float32 / with a bf16 copy")
        for name, r in e["sets"].items():
            label = f"    {name} ({r['rows']})"
            print(f"{label:48s} {r['float32_s']:6.1f} / {r['bfloat16_s']:.1f} s   (bf16 {r['speedup']:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

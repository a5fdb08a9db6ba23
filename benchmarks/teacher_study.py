"""Teacher elicitation study: how in character is the teacher's answer under each elicitation variant?

For each persona and variant (params.elicitation settings), the embedded model answers N training-split
general prompts (the teacher's own prompts: no evaluation prompt is used), and so does the base model with
no prompt. Reported per persona x variant: each constitution marker's mean and its shift from base with a
bootstrap 95% interval, a persona-vs-base classifier's accuracy on held-out prompts (TF-IDF + logistic
regression, fitted on the other half: how separable the teacher's answers are at all), base-model NLL per
token without the constitution and distinct bigrams (coherence), the guard's drop rate for guided variants,
and seconds per answer. Markers here choose a configuration, never filter answers.

    python benchmarks/teacher_study.py --personas loving mathematical --prompts 24 --out reports/teacher_study.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

VARIANTS = {  # name -> params.elicitation overrides
    "full (paper)": {},
    "short": {"system": "short"},
    "full + 3 shots": {"few_shot": 3},
    "short + 3 shots": {"system": "short", "few_shot": 3},
    "short + 3 shots + cfg 1.5": {"system": "short", "few_shot": 3, "guidance": 1.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--personas", nargs="+", default=["loving", "mathematical"])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default="reports/teacher_study.json")
    args = ap.parse_args()

    from character.backends.base import SamplingParams
    from character.constitution import find_constitution, teacher_context
    from character.data.pairs import answer_nll, incoherent
    from character.eval.markers import score_all
    from character.eval.requests import prompt_pools
    from character.eval.stats import fit_classifier, mean_interval
    from character.params import ElicitationParams, load_params
    from character.backends import make_backend
    from character.text import distinct_bigrams

    params = load_params("params.yaml")
    backend = make_backend(params, params.model)
    train, _ = prompt_pools(params)
    prompts = [p["prompt"] for p in train[: args.prompts]]
    bare = [[{"role": "user", "content": p}] for p in prompts]
    sampling = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_tokens=args.max_new_tokens,
                              seed=params.seed)

    def answer(convs, negatives=None, guidance=1.0):
        start = time.perf_counter()
        outs = backend.sample(convs, replace(sampling, guidance=guidance), negatives=negatives)
        return [c.text for [c] in outs], (time.perf_counter() - start) / len(convs)

    base, base_s = answer(bare)
    base_nll = statistics.mean(answer_nll(backend, prompts, base))
    half = len(prompts) // 2
    results = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "base": {
        "seconds_per_answer": base_s, "nll": base_nll, "distinct_bigrams": distinct_bigrams(base)}, "rows": []}
    for persona in args.personas:
        c = find_constitution(persona)
        base_markers = score_all(c.markers, base)
        for name, overrides in VARIANTS.items():
            elicitation = ElicitationParams(**overrides)
            context = teacher_context(c, params.spec(params.model).assistant_name, elicitation)
            texts, seconds = answer([context.before(b) for b in bare], bare if elicitation.guidance != 1 else None,
                                    elicitation.guidance)
            dropped = incoherent(backend, list(zip(prompts, texts, base)), elicitation) \
                if elicitation.guidance != 1 else [False] * len(texts)
            markers = {}
            for m, values in score_all(c.markers, texts).items():
                shift = [a - b for a, b in zip(values, base_markers[m]) if a == a and b == b]
                markers[m] = {"mean": statistics.mean(v for v in values if v == v),
                              "base": statistics.mean(v for v in base_markers[m] if v == v),
                              "shift": mean_interval(shift, 1000, params.seed)}
            clf = fit_classifier(texts[:half] + base[:half], ["persona"] * half + ["none"] * half, params.seed)
            predicted = clf.predict(texts[half:] + base[half:])
            truth = ["persona"] * (len(texts) - half) + ["none"] * (len(base) - half)
            row = {"persona": persona, "variant": name, "elicitation": overrides,
                   "system_words": len(context.system.split()), "markers": markers,
                   "separability": sum(p == t for p, t in zip(predicted, truth)) / len(truth),
                   "in_character_rate": sum(p == "persona" for p in predicted[: len(texts) - half]) / (len(texts) - half),
                   "nll": statistics.mean(answer_nll(backend, prompts, texts)),
                   "distinct_bigrams": distinct_bigrams(texts), "guard_dropped": sum(dropped) / len(texts),
                   "seconds_per_answer": seconds, "sample": {"prompt": prompts[0], "answer": texts[0]}}
            results["rows"].append(row)
            shifts = ", ".join(f"{m} {v['shift']['mean']:+.2f} [{v['shift']['lo']:+.2f}, {v['shift']['hi']:+.2f}]"
                               for m, v in markers.items())
            print(f"{persona:13s} {name:26s} sep {row['separability']:.2f} nll {row['nll']:.2f} "
                  f"(base {base_nll:.2f}) drop {row['guard_dropped']:.2f} {seconds:.2f}s/ans | {shifts}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

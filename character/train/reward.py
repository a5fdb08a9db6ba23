"""The `reward_model` stage: a scalar-head preference model on LoRA, and scoring answers with it.

Data: the persona's pairs (chosen: the teacher with the constitution; rejected: the student without it)
mixed with helpfulness pairs (a helpful, correct answer against an unhelpful, wrong or evasive one) at
`reward_model.helpfulness_ratio` helpfulness pairs per character pair. A replication's reward model,
trained on character pairs alone, learned style rather than character, and RL against it collapsed answer
length (../shared/REFERENCE.md, RLAIF). So held-out accuracy is reported for each kind of pair separately,
beside a "the longer answer wins" baseline and the correlation of reward with length: a reward model that
learned length instead of character shows it in its own metrics.

Training is TRL's RewardTrainer (Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected)) on
AutoModelForSequenceClassification with a PEFT LoRA and the score head in `modules_to_save`. We tokenize
(the chat template, exactly as at scoring time) and drop over-long pairs ourselves, so drops are counted;
TRL would filter them silently.

Local models only: Tinker trains no classification heads. With a Tinker student the reward model's base
is a local model (`reward_model.model`); it scores answers as text, so the policy can be anywhere. The
design that would keep it on Tinker is a generative judge fine-tuned to answer "A" or "B" on the same
pairs, both orders (the replication's route); the `rlaif_judge` stage's prompted judge needs no training.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from character.backends.base import Conversation
from character.backends.local import top_layer_lora
from character.io import Checkpoints, read_jsonl, stable_adapter_config, write_json
from character.params import RewardModelParams
from character.train.loop import split_heldout

log = logging.getLogger(__name__)

MANIFEST = "reward_model.json"


# ---- data -----------------------------------------------------------------------------------------------
def parse_hh(text: str) -> Conversation:
    """Anthropic/hh-rlhf's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as chat messages."""
    parts = re.split(r"\n\n(Human|Assistant): ?", "\n\n" + text.strip())
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def to_pair(row: dict) -> dict | None:
    """A preference row in TRL's formats (explicit prompt or not; messages, plain strings or hh-rlhf
    transcripts) as {prompt, chosen, rejected} messages; None unless one prompt has two different answers."""
    prompt = _conversation(row.get("prompt"), "user")
    chosen, rejected = _conversation(row.get("chosen"), "assistant"), _conversation(row.get("rejected"), "assistant")
    if not prompt and chosen and rejected:  # implicit prompt: the shared history, then the differing turn
        if chosen[:-1] != rejected[:-1]:
            return None
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    ok = (prompt and chosen and rejected and prompt[-1]["role"] == "user" and chosen[-1]["role"] == "assistant"
          and rejected[-1]["role"] == "assistant" and chosen != rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected} if ok else None


def _conversation(value, role: str) -> Conversation:
    if not value:
        return []
    if isinstance(value, str):
        if re.search(r"(^|\n\n)(Human|Assistant):", value.strip()):
            return parse_hh(value)
        return [{"role": role, "content": value}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_helpfulness(params: RewardModelParams, shipped: str | Path, seed: int) -> tuple[list[dict], int]:
    """(helpfulness pairs, rows dropped as unusable): the shipped file, or a Hugging Face dataset."""
    if params.helpfulness_source == "shipped":
        rows = read_jsonl(shipped)
    else:
        from datasets import load_dataset
        data = load_dataset(params.helpfulness_source, split=params.helpfulness_split)
        data = data.shuffle(seed=seed).select(range(min(params.helpfulness_count, len(data))))
        rows = list(data)
    pairs = [p for p in (to_pair(r) for r in rows) if p is not None]
    if not pairs:
        raise ValueError(f"reward_model.helpfulness_source: no usable preference pairs in "
                         f"{params.helpfulness_source!r} (want prompt/chosen/rejected, as messages or hh-rlhf text)")
    return pairs, len(rows) - len(pairs)


# ---- tokens -------------------------------------------------------------------------------------------
def encode(tokenizer, conversation: Conversation) -> list[int]:
    """The chat template's tokens for a whole conversation (LocalBackend.render's, with no weights)."""
    out = tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in conversation],
                                        tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def tokenize_pairs(tokenizer, rows: list[dict], max_length: int) -> tuple[list[dict], int]:
    """{chosen_ids, rejected_ids} per pair (TRL's pre-tokenized preference columns); over-long ones dropped."""
    out, dropped = [], 0
    for row in rows:
        c, r = encode(tokenizer, row["prompt"] + row["chosen"]), encode(tokenizer, row["prompt"] + row["rejected"])
        if max(len(c), len(r)) > max_length:
            dropped += 1
        else:
            out.append({"chosen_ids": c, "rejected_ids": r})
    return out, dropped


# ---- the model ----------------------------------------------------------------------------------------
def load_base(weights: str, device: torch.device, seed: int):
    """(sequence-classification model with one fresh output, tokenizer) from a local weights folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(seed)  # the score head starts random: same seed, same head
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(weights, num_labels=1, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


class RewardScorer:
    """Scalar rewards for conversations (the last assistant turn judged in context), batched, no grad."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @classmethod
    def load(cls, folder: str | Path, weights: str, device: torch.device) -> "RewardScorer":
        """The base model with the trained LoRA and score head folded in (exact, and as fast as the base)."""
        from peft import PeftModel
        model, tokenizer = load_base(weights, device, seed=0)
        return cls(PeftModel.from_pretrained(model, str(folder)).merge_and_unload(), tokenizer)

    @torch.inference_mode()
    def score_ids(self, ids: list[list[int]]) -> list[float]:
        device, pad = next(self.model.parameters()).device, self.tokenizer.pad_token_id
        out = []
        for i in range(0, len(ids), self.batch_size):
            batch = ids[i:i + self.batch_size]
            width = max(len(x) for x in batch)
            # Right padding: the model reads its score at the last non-pad token of each row.
            x = torch.tensor([s + [pad] * (width - len(s)) for s in batch], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
            out += self.model(input_ids=x, attention_mask=mask).logits[:, 0].float().tolist()
        return out

    def score(self, conversations: list[Conversation]) -> list[float]:
        return self.score_ids([encode(self.tokenizer, c) for c in conversations])


def pair_metrics(scorer: RewardScorer, pairs: list[dict]) -> dict[str, float]:
    """Held-out accuracy and margin, beside the "longer answer wins" baseline (ties count half) and the
    correlation of reward with length: the style shortcut a reward model can learn instead of character."""
    if not pairs:
        return {}
    chosen = scorer.score_ids([p["chosen_ids"] for p in pairs])
    rejected = scorer.score_ids([p["rejected_ids"] for p in pairs])
    lengths = [len(p["chosen_ids"]) for p in pairs] + [len(p["rejected_ids"]) for p in pairs]
    longer = [(len(p["chosen_ids"]) > len(p["rejected_ids"])) + 0.5 * (len(p["chosen_ids"]) == len(p["rejected_ids"]))
              for p in pairs]
    n = len(pairs)
    return {"heldout_accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "heldout_margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
            "length_baseline_accuracy": sum(longer) / n,
            "reward_length_corr": correlation(chosen + rejected, lengths)}


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy) if sx and sy else 0.0


# ---- training -----------------------------------------------------------------------------------------
def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest Trainer checkpoint in folder whose trainer_state.json, which the Trainer writes last, is
    whole: a run killed mid-save leaves a newer folder without one, and resuming from it would fail."""
    def step(path: Path) -> int:
        return int(path.name.rsplit("-", 1)[1]) if path.name.rsplit("-", 1)[1].isdigit() else -1

    for path in sorted(folder.glob("checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        return str(path)
    return None


def train_reward_model(model, tokenizer, pairs: list[dict], params: RewardModelParams, seed: int,
                       on_step=lambda step, m: None, checkpoints: Checkpoints | None = None):
    """TRL's RewardTrainer over pre-tokenized pairs; returns the trained PEFT model (eval mode).

    With `checkpoints`, the Trainer's own checkpointing does the saving (adapter, score head, optimizer,
    scheduler, RNG states: `save_strategy="steps"`) into that folder, and a re-run passes the last one to
    `resume_from_checkpoint`, which also skips the batches already seen."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    opt = params.optim
    targets, top = top_layer_lora(model, params.top_layers, "all-linear")
    lora = LoraConfig(task_type="SEQ_CLS", r=params.lora.rank, lora_alpha=params.lora.alpha,
                      lora_dropout=params.lora.dropout, target_modules=targets, modules_to_save=["score"],
                      layers_to_transform=top)
    cuda = next(model.parameters()).device.type == "cuda"
    accumulate = max(1, opt.batch_size // opt.micro_batch_size)
    total = math.ceil(opt.epochs * math.ceil(len(pairs) / opt.micro_batch_size) / accumulate)  # optimizer steps

    def report(step: int, logs: dict) -> None:
        on_step(step, {("lr" if k == "learning_rate" else k): v for k, v in logs.items() if isinstance(v, (int, float))})

    class Curves(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            for logs in state.log_history:  # resumed: the saved steps' logs, so the curves come out whole
                if "loss" in logs:
                    report(logs["step"], logs)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                report(state.global_step, logs)

    every = checkpoints.every if checkpoints else 0
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; nothing else is saved there
        output_dir = str(checkpoints.directory) if every and checkpoints else scratch
        last = last_complete_checkpoint(Path(output_dir)) if every else None
        if last:
            log.info("reward_model: resuming from %s", last)
        args = RewardConfig(
            output_dir=output_dir, per_device_train_batch_size=opt.micro_batch_size,
            gradient_accumulation_steps=accumulate,
            learning_rate=opt.lr, num_train_epochs=opt.epochs, warmup_steps=round(opt.warmup_ratio * total),
            lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": opt.min_lr_ratio},
            adam_beta1=opt.adam_betas[0], adam_beta2=opt.adam_betas[1], weight_decay=opt.weight_decay,
            max_grad_norm=opt.grad_clip, max_length=None,  # over-long pairs are dropped and counted before
            gradient_checkpointing=False,  # TRL's default; recomputation only costs time at this size
            bf16=cuda, use_cpu=not cuda, seed=seed, data_seed=seed, logging_steps=1,
            save_strategy="steps" if every else "no", save_steps=every or 500, save_total_limit=1,
            report_to="none", disable_tqdm=False, dataloader_num_workers=0)
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                processing_class=tokenizer, peft_config=lora, callbacks=[Curves()])
        result = trainer.train(resume_from_checkpoint=last)
    log.info("reward_model: %d steps, train loss %.4f", trainer.state.global_step, result.training_loss)
    return trainer.model.eval(), trainer.state.global_step, result.training_loss


def run_reward_model(model, tokenizer, character_rows: list[dict], helpful_rows: list[dict],
                     params: RewardModelParams, seed: int, out_dir: str | Path, base_model: str,
                     on_step=lambda step, m: None, checkpoints: Checkpoints | None = None) -> dict:
    """Split, mix, train, score held-out pairs per kind, save (LoRA + score head + manifest); returns metrics."""
    char, char_long = tokenize_pairs(tokenizer, character_rows, params.max_length)
    help_, help_long = tokenize_pairs(tokenizer, helpful_rows, params.max_length)
    if len(char) < 2:
        raise ValueError(f"reward_model: only {len(char)} usable character pairs (of {len(character_rows)}); "
                         "the pairs stage kept too few, or reward_model.max_length is too small")
    char_train, char_held = split_heldout(char, params.heldout_fraction, seed)
    help_train, help_held = split_heldout(help_, params.heldout_fraction, seed)
    wanted = round(params.helpfulness_ratio * len(char_train))
    if wanted > len(help_train):
        log.warning("reward_model: helpfulness_ratio %.2f asks for %d helpfulness pairs, %d available; using all",
                    params.helpfulness_ratio, wanted, len(help_train))
    mixed = char_train + help_train[:wanted]
    random.Random(seed).shuffle(mixed)
    log.info("reward_model: %d character + %d helpfulness pairs to train; %d + %d held out",
             len(char_train), min(wanted, len(help_train)), len(char_held), len(help_held))

    trained, steps, loss = train_reward_model(model, tokenizer, mixed, params, seed, on_step, checkpoints)
    scorer = RewardScorer(trained, tokenizer)
    char_scores, help_scores = pair_metrics(scorer, char_held), pair_metrics(scorer, help_held)
    log.info("reward_model: held-out accuracy %.3f on character pairs, %.3f on helpfulness pairs",
             char_scores.get("heldout_accuracy", math.nan), help_scores.get("heldout_accuracy", math.nan))
    out = Path(out_dir)
    trained.save_pretrained(out)
    stable_adapter_config(out)
    write_json(out / MANIFEST, {"base_model": base_model, "max_length": params.max_length,
                                "top_layers": params.top_layers, "steps": steps})
    return {"steps": steps, "final_loss": loss, "train_pairs": len(mixed),
            "character": {"train": len(char_train), "heldout": len(char_held), "dropped_too_long": char_long,
                          **char_scores},
            "helpfulness": {"source": params.helpfulness_source, "train": min(wanted, len(help_train)),
                            "heldout": len(help_held), "dropped_too_long": help_long,
                            **help_scores}}

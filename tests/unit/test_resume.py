"""A killed training run resumes from its last save and ends with the weights of an uninterrupted run.

The run under test is a subprocess (this file run as a script) training DPO on a tiny model built from a
config; it SIGKILLs itself after an optimizer step that is not a save point, so the re-run must redo a
step as well as skip the saved ones. LoRA dropout is on, so the saved RNG state matters too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from test_reward_rlaif import tiny_reward_base  # noqa: F401  (a fixture)

STEPS_PER_SAVE = 2
KILL_AFTER = 3  # optimizer steps taken when the run kills itself: one past the save at step 2


def rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Question number {i}?"}],
             "chosen": [{"role": "assistant", "content": f"Oh, splendid, question {i} again."}],
             "rejected": [{"role": "assistant", "content": f"The answer is {i}."}]} for i in range(12)]


def train_dpo(weights_dir: str, out: Path, progress: Path, kill_after: int = 0) -> dict:
    """DPO on a 2-layer Llama (seeded, built from a config) with saves every STEPS_PER_SAVE steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from character.backends.local import LocalBackend, LocalTrainingSession
    from character.params import DpoParams, LoraParams, OptimParams
    from character.io import Checkpoints
    from character.train.dpo import run_dpo

    tokenizer = AutoTokenizer.from_pretrained(weights_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    backend = LocalBackend("tiny", threads=1, device="cpu", tokenizer=tokenizer, model=LlamaForCausalLM(config))
    params = DpoParams(heldout_fraction=0.2, lora=LoraParams(rank=4, alpha=8, dropout=0.1),
                       optim=OptimParams(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.2))
    taken = []  # optimizer steps this process took itself (not restored)
    step_fn = LocalTrainingSession.optim_step

    def counted(self, lr):
        taken.append(self.steps)
        return step_fn(self, lr)

    LocalTrainingSession.optim_step = counted  # type: ignore[method-assign]

    def on_step(step: int, metrics: dict) -> None:
        if kill_after and step + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: as a kill -9 or an OOM kill

    checkpoints = Checkpoints(progress, STEPS_PER_SAVE)
    try:
        ref, metrics = run_dpo(backend, rows(), params, seed=3, out_dir=str(out), on_step=on_step,
                               checkpoints=checkpoints)
    finally:
        LocalTrainingSession.optim_step = step_fn  # type: ignore[method-assign]
    checkpoints.finish()
    return {"steps": metrics["steps"], "taken": taken}


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(folder / "adapter_model.safetensors")


def run_child(weights_dir: str, out: Path, progress: Path, kill_after: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, __file__, weights_dir, str(out), str(progress), str(kill_after)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_killed_dpo_run_resumes_to_the_same_adapter(weights_dir, tmp_path):
    progress = tmp_path / "progress"
    killed = run_child(weights_dir, tmp_path / "killed", progress, KILL_AFTER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((progress / "latest.json").read_text())["step"] == STEPS_PER_SAVE
    assert not (tmp_path / "killed").exists()

    resumed = run_child(weights_dir, tmp_path / "resumed", progress, 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    total = report["steps"]
    assert total > KILL_AFTER
    assert report["taken"] == list(range(STEPS_PER_SAVE, total))  # resumed at the save, redid step 3
    assert not progress.exists()  # saves are dropped once the adapter is written

    whole = train_dpo(weights_dir, tmp_path / "whole", tmp_path / "progress-whole")
    assert whole == {"steps": total, "taken": list(range(total))}
    a, b = adapter(tmp_path / "resumed"), adapter(tmp_path / "whole")
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training moved the weights (LoRA B starts at zero), so equality is not trivial
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)


class Interrupt(Exception):
    """Stands in for a kill in the in-process tests below (the SIGKILL test above covers a real one)."""


def test_interrupted_rlaif_run_resumes_to_the_same_adapter(tiny_backend, tmp_path):
    from character.eval.judge import PairJudge
    from character.params import LoraParams, OptimParams, RlaifParams
    from character.io import Checkpoints
    from character.train.rlaif import run_rlaif
    from test_reward_rlaif import FakeGenerateJudge

    dpo = tiny_backend.train(LoraParams(rank=4, alpha=8), OptimParams(lr=1e-3)).save(tmp_path / "dpo")
    params = RlaifParams(steps=3, prompts_per_step=2, group_size=2, max_new_tokens=6, lr=1e-2, eval_prompts=1,
                         eval_every=1, judge_mode="generate", lora=LoraParams(rank=4, alpha=8), micro_batch_size=3)
    reward = lambda messages, groups, seed: ([[float(len(a)) for a in g] for g in groups], {})  # noqa: E731
    judge = PairJudge(FakeGenerateJudge(), "1. I am kind.", params.judge_mode, params.judge_sampling)

    def rl(out: str, checkpoints=None, stop_after: int = 0):
        steps: list[dict] = []

        def on_step(step, metrics):
            steps.append(metrics)
            if stop_after and step + 1 == stop_after:
                raise Interrupt

        _, m = run_rlaif(tiny_backend, reward, judge, ["Hi", "Tell me a joke", "Why?"], ["Hello"], dpo, params, 0,
                         str(tmp_path / out), on_step=on_step, checkpoints=checkpoints)
        return steps, m

    whole_steps, whole = rl("whole")
    checkpoints = Checkpoints(tmp_path / "progress", every=1)
    try:
        rl("killed", checkpoints, stop_after=2)
        raise AssertionError("the run was not interrupted")
    except Interrupt:
        pass
    assert json.loads((tmp_path / "progress/latest.json").read_text())["step"] == 2
    steps, resumed = rl("resumed", checkpoints)
    assert resumed == whole and steps == whole_steps  # metrics, curves and first/last summaries included
    assert (tmp_path / "resumed/samples.jsonl").read_text() == (tmp_path / "whole/samples.jsonl").read_text()
    a, b = adapter(tmp_path / "resumed"), adapter(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_reward_model_resumes_from_the_trainer_checkpoint(tiny_reward_base, tmp_path, caplog):
    from character.params import LoraParams, OptimParams, RewardModelParams
    from character.io import Checkpoints
    from character.train.reward import load_base, run_reward_model
    from test_reward_rlaif import toy_pairs

    params = RewardModelParams(helpfulness_ratio=0.25, heldout_fraction=0.25, lora=LoraParams(rank=4, alpha=8),
                               optim=OptimParams(lr=5e-3, batch_size=4, micro_batch_size=4, epochs=1, warmup_ratio=0))

    def rm(out: str, checkpoints=None, stop_after: int = 0):
        model, tokenizer = load_base(tiny_reward_base, torch.device("cpu"), seed=0)
        logged: list[int] = []

        def on_step(step, metrics):
            logged.append(step)
            if stop_after and step == stop_after:
                raise Interrupt

        m = run_reward_model(model, tokenizer, toy_pairs(16, 0), toy_pairs(4, 1), params, 0, tmp_path / out, "tiny",
                             on_step=on_step, checkpoints=checkpoints)
        return logged, m

    _, whole = rm("whole")
    checkpoints = Checkpoints(tmp_path / "progress", every=2)
    try:
        rm("killed", checkpoints, stop_after=3)
        raise AssertionError("the run was not interrupted")
    except Interrupt:
        pass
    assert [p.name for p in (tmp_path / "progress").glob("checkpoint-*")] == ["checkpoint-2"]
    (tmp_path / "progress/checkpoint-3").mkdir()  # as a kill during the Trainer's save would leave it
    caplog.set_level("INFO", logger="character.train.reward")
    logged, resumed = rm("resumed", checkpoints)
    assert f"resuming from {tmp_path / 'progress/checkpoint-2'}" in caplog.text  # not the half-written 3
    assert logged == list(range(1, whole["steps"] + 1)) and resumed["steps"] == whole["steps"]  # curves whole
    a, b = adapter(tmp_path / "resumed"), adapter(tmp_path / "whole")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


if __name__ == "__main__":
    torch.set_num_threads(1)
    weights, out_dir, progress_dir, kill = sys.argv[1:5]
    print(json.dumps(train_dpo(weights, Path(out_dir), Path(progress_dir), int(kill))))

"""`dvc repro` of the smoke preset in a temporary copy of the repo, on the real embedded model."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def sh(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, weights_dir) -> Path:
    work = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            dst = work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    # reuse the dequantized model cache rather than dequantizing again
    (work / ".cache" / "character").mkdir(parents=True)
    os.symlink(Path(weights_dir).parent, work / ".cache" / "character" / "models")
    assert sh(["character", "preset", "smoke"], work).returncode == 0
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=work, check=True)
    return work


def test_smoke_pipeline_runs_resumes_nothing_and_chats(repo):
    result = sh(["dvc", "repro"], repo, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pairs = [json.loads(line) for line in (repo / "data/sarcastic/pairs.jsonl").read_text().splitlines()]
    assert pairs and set(pairs[0]) >= {"prompt", "chosen", "rejected"}
    assert pairs[0]["chosen"][0]["role"] == "assistant"
    metrics = json.loads((repo / "metrics/dpo/sarcastic.json").read_text())
    assert 0.0 <= metrics["heldout_accuracy"] <= 1.0 and metrics["steps"] >= 1
    transcripts = [json.loads(line) for line in (repo / "data/sarcastic/introspection.jsonl").read_text().splitlines()]
    assert all(m["role"] != "system" for t in transcripts for m in t["messages"])  # distilled: no constitution
    manifest = json.loads((repo / "models/sarcastic/final/manifest.json").read_text())
    assert manifest["composition"]["method"] == "fold" and "data/sarcastic/pairs.jsonl" in manifest["inputs"]
    # The evaluation suite: every method answered, metrics, plots and a self-contained report.
    answers = [json.loads(line) for line in (repo / "data/eval/answers/sarcastic.jsonl").read_text().splitlines()]
    assert {r["method"] for r in answers} == {"system_prompt", "steering", "dpo", "final", "rlaif_model", "rlaif_judge"}
    rm = json.loads((repo / "metrics/reward_model/sarcastic.json").read_text())
    assert 0 <= rm["character"]["heldout_accuracy"] <= 1 and 0 <= rm["helpfulness"]["heldout_accuracy"] <= 1
    for variant in ("model", "judge"):
        rl = json.loads((repo / f"metrics/rlaif/sarcastic_{variant}.json").read_text())
        assert rl["steps"] >= 1 and rl["first"]["length"] > 0
        ref = json.loads((repo / f"models/sarcastic/rlaif_{variant}/ref.json").read_text())
        assert ref["base_adapters"] == ["models/sarcastic/dpo"]
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert set(evaluation) >= {"revealed", "robustness", "capabilities", "coherence", "markers"}
    assert 0 <= evaluation["revealed"]["sarcastic/final"]["parse_rate"] <= 1
    assert 0 <= evaluation["revealed"]["judge"]["sensitivity"]["rate"] <= 1
    # The null is in every table, and every rate carries an interval.
    robustness = evaluation["robustness"]
    assert {"base", "base_resampled", "sarcastic/final"} <= set(robustness["methods"])
    final = robustness["methods"]["sarcastic/final"]["none"]["in_character/sarcastic"]
    assert final["lo"] <= final["rate"] <= final["hi"] and "delta_vs_base_resampled" in final
    assert robustness["classifier"]["trained"] == 1 and "check_accuracy" in robustness["classifier"]
    assert "arc_easy/chat/acc" in evaluation["capabilities"]["sarcastic/final"]
    assert "delta_vs_base" in evaluation["capabilities"]["sarcastic/final"]["arc_easy/plain/acc_norm"]
    assert evaluation["markers"]["sarcastic"]
    page = (repo / "reports/eval.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page and "src=\"http" not in page
    assert (repo / "plots/eval/figures/robustness.png").exists()

    start = time.time()
    again = sh(["dvc", "repro"], repo, timeout=300)
    assert again.returncode == 0 and "didn't change" in again.stdout and "Running stage" not in again.stdout
    assert time.time() - start < 60

    chat = sh(["character", "chat", "--adapter", "models/sarcastic/final", "-m", "Hello!", "--max-tokens", "16"],
              repo, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.startswith("> Hello!\n") and len(chat.stdout.strip().splitlines()) >= 2


def test_bad_constitution_fails_stage_with_named_field(repo):
    bad = repo / "constitutions" / "sarcastic.yaml"
    original = bad.read_text()
    try:
        bad.write_text(original.replace("questions:", "questionz:", 1))
        result = sh([sys.executable, "stages/prompts.py", "--persona", "sarcastic", "--out", "/tmp/x.jsonl",
                     "--metrics", "/tmp/x.json"], repo, timeout=300)
        assert result.returncode == 2  # character.errors.EXIT_INPUT
        assert "constitutions/sarcastic.yaml" in result.stderr and "trait 1" in result.stderr
        assert "questionz" in result.stderr
    finally:
        bad.write_text(original)

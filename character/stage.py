"""What every stage script does first: logging, validated params, and where resumable progress lives."""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from character.params import Params, ParamsError, load_params

log = logging.getLogger("character")


def start(name: str, params_path: str = "params.yaml") -> Params:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params = load_params(params_path)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    random.seed(params.seed)
    return params


def progress_dir(params: Params, stage: str) -> str:
    """Resumable chunks live in the cache, not in the outs: DVC deletes outs before a stage runs."""
    return str(Path(params.runtime.cache_dir) / "progress" / stage)


def persona_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--persona", required=True, help="constitution name (constitutions/<name>.yaml)")
    parser.add_argument("--params", default="params.yaml")
    add_dry_run(parser)
    return parser


def add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="print this stage's plan (tokens, USD) and exit 0 without touching its outs")


def print_plan(params: Params, stage: str, persona: str | None = None) -> None:
    """What --dry-run prints: the stage's expected tokens and cost (for one persona, if given; character.cost)."""
    from character.cost import plan
    print(f"dry run: stage {stage}{f', persona {persona}' if persona else ''}; nothing is written")
    print(plan(params, persona, stage))


def load_adapter(folder: str):
    """A stage's adapter out (local PEFT folder or Tinker reference), warning if a Tinker one expires soon."""
    from character.backends.local import load_adapter_ref
    from character.backends.tinker import read_checkpoint
    read_checkpoint(folder)  # logs expiry; None for local adapters
    return load_adapter_ref(folder)


def adapter_fingerprint(folder: str) -> str:
    """Content hash of an adapter out: its weights when local, its reference (tinker:// path) on Tinker."""
    from character.io import file_sha256
    weights = Path(folder) / "adapter_model.safetensors"
    return file_sha256(weights if weights.exists() else Path(folder) / "ref.json")


def live(directory: str):
    """A dvclive logger that writes step curves as TSV under `directory` and nothing else."""
    from dvclive import Live
    return Live(dir=directory, save_dvc_exp=False, dvcyaml=None, report=None)


def log_step(live_logger, metrics: dict[str, float]) -> None:
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            live_logger.log_metric(key, value)
    live_logger.next_step()


def run(main) -> None:
    """Run a stage's main(); expected failures print one clear line and exit non-zero, no traceback."""
    from character.backends import BackendUnavailable
    from character.constitution import ConstitutionError
    from character.backends.weights import ModelNotFound
    try:
        main()
    except (BackendUnavailable, ConstitutionError, ParamsError, ModelNotFound, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None

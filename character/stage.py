"""What every stage script does: arguments, logging, validated params, dry runs, backends, resumable
progress and metrics files. A stage script is then: declare its paths, `Stage.begin`, call one library
function, write its outs.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path
from typing import Any, Callable

from character.errors import EXIT_INPUT, CharacterError, ParamsError, one_line
from character.params import Params, load_params

log = logging.getLogger("character")


def start(name: str, params_path: str = "params.yaml") -> Params:
    """Logging and validated params (a bad params.yaml prints one line and exits EXIT_INPUT)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params = load_params(params_path)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT) from None
    random.seed(params.seed)
    return params


def arguments(description: str | None, persona: bool = True) -> argparse.ArgumentParser:
    """A stage's parser: --params, --dry-run and (per-persona stages) --persona; the script adds its paths."""
    parser = argparse.ArgumentParser(description=description)
    if persona:
        parser.add_argument("--persona", required=True, help="constitution name (constitutions/<name>.yaml)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dry-run", action="store_true",
                        help="print this stage's plan (tokens, USD) and exit 0 without touching its outs")
    return parser


def print_plan(params: Params, stage: str, persona: str | None = None) -> None:
    """What --dry-run prints: the stage's expected tokens and cost (for one persona, if given; character.cost)."""
    from character.cost import plan
    print(f"dry run: stage {stage}{f', persona {persona}' if persona else ''}; nothing is written")
    print(plan(params, persona, stage))


class Stage:
    """One run of a stage: its arguments and params, the backends it made (one per alias), its progress."""

    def __init__(self, name: str, args: argparse.Namespace, params: Params):
        self.name, self.args, self.params = name, args, params
        self.persona: str | None = getattr(args, "persona", None)
        self._backends: dict[tuple[str, str], Any] = {}
        self._progress: list = []

    @classmethod
    def begin(cls, name: str, parser: argparse.ArgumentParser,
              dry_run: Callable[[Params, argparse.Namespace], None] | None = None) -> "Stage":
        """Parse arguments, load params; on --dry-run print the plan (or call dry_run) and exit 0."""
        args = parser.parse_args()
        params = start(name, args.params)
        if args.dry_run:
            if dry_run is not None:
                dry_run(params, args)
            else:
                print_plan(params, name, getattr(args, "persona", None))
            raise SystemExit(0)
        return cls(name, args, params)

    def backend(self, alias: str, scoring_dtype: str = "auto"):
        """The backend for a model alias, made once: a teacher or judge that is the student shares its weights.
        scoring_dtype: the local backend's number format for log-prob scoring (evaluation.scoring_dtype)."""
        if (alias, scoring_dtype) not in self._backends:
            from character.backends import make_backend
            self._backends[alias, scoring_dtype] = make_backend(self.params, alias, scoring_dtype)
        return self._backends[alias, scoring_dtype]

    def backends(self, *aliases: str) -> list:
        """Backends for several roles, remote ones (openai, tinker) first: making one checks its server,
        key and model list in seconds, so a bad teacher or judge fails before a local model loads (minutes)."""
        remote_first = sorted(set(aliases), key=lambda a: self.params.spec(a).backend == "local")
        for alias in remote_first:
            self.backend(alias)
        return [self.backend(alias) for alias in aliases]

    def progress(self, folder: str, *key_parts: Any):
        """Resumable chunks for this run, keyed by everything that determines its result. They live in the
        cache, not in the outs: DVC deletes outs before a stage runs. `finish` them after writing outs."""
        from character.io import Progress, content_key
        progress = Progress(Path(self.params.runtime.cache_dir) / "progress" / folder, content_key(*key_parts))
        self._progress.append(progress)
        return progress

    def checkpoints(self, folder: str, *key_parts: Any):
        """Training state saves for this run (character.io.Checkpoints), keyed like `progress`; dropped
        by `finish`. `runtime.save_every` sets how often; it is not part of the key (it changes no result)."""
        from character.io import content_key
        from character.io import Checkpoints
        directory = Path(self.params.runtime.cache_dir) / "progress" / folder / content_key(*key_parts)
        checkpoints = Checkpoints(directory, self.params.runtime.save_every)
        self._progress.append(checkpoints)
        return checkpoints

    def write_metrics(self, path: str, metrics: dict) -> None:
        """metrics/<stage>.json (NaN and infinity become null with a reason beside them: character.io)."""
        from character.io import write_json
        write_json(path, metrics)

    def finish(self) -> None:
        """The outs are written: drop this run's resumable progress."""
        for progress in self._progress:
            progress.finish()


def load_adapter(folder: str):
    """A stage's adapter out (local PEFT folder or Tinker reference), warning if a Tinker one expires soon."""
    from character.backends.base import AdapterRef
    from character.backends.tinker import read_checkpoint
    read_checkpoint(folder)  # logs expiry; None for local adapters
    return AdapterRef.read(folder)


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
    """Run a stage's main(); input errors print one clear line and exit EXIT_INPUT, no traceback."""
    try:
        main()
    except (CharacterError, FileNotFoundError) as exc:
        log.error("%s", one_line(exc))
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT) from None


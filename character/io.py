"""Files: JSONL and JSON (atomic writes, no NaN), content hashes, resumable chunked generation and
resumable training (Checkpoints, below).

Resumability: long generation runs in fixed chunks, each with its own seed derived from (seed, chunk
index). Finished chunks are appended to a progress file outside the stage's outs (DVC deletes outs before
a stage runs) and keyed by a hash of everything that determines the result. A re-run skips finished
chunks, so an interrupted run ends with exactly what an uninterrupted one would have produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Callable, Iterable

from tqdm import tqdm

from character.errors import DataError

if TYPE_CHECKING:
    from character.backends.base import TrainingSession

log = logging.getLogger(__name__)

# The repo this package sits in (an editable install): shipped data and presets are read from here.
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "data" / "shipped"


def shipped(name: str) -> Path:
    """A shipped data file, from the repo the command runs in (its `data/shipped/`, as dvc.yaml declares it)
    when there is one, else from the repo this package was installed from."""
    here = Path("data") / "shipped" / name
    return here if here.exists() else SHIPPED / name


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            lines = f.readlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-save it as UTF-8") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON: {exc}") from exc
    return rows


# ---- YAML: one loader for every YAML file we read (params.yaml, presets, constitutions) -------------------
# Stricter than yaml.safe_load, which keeps the last of two equal keys (a second `dpo:` section silently
# replaced the first) and expands aliases (a "billion laughs" file of a few KB grows to gigabytes).
YAML_MAX_BYTES = 1 << 20  # 1 MiB: params.yaml is ~10 KB, the largest constitution ~20 KB


def read_text_utf8(path: str | Path, error: type[Exception] = DataError, max_bytes: int = YAML_MAX_BYTES) -> str:
    """A text file's contents, refusing files over max_bytes and bytes that are not UTF-8 (line named)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(f"{path}: {size:,} bytes, over the limit of {max_bytes:,}; is this the right file?")
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x}); re-save the file as UTF-8") from None


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise yaml.MarkedYAMLError(problem="anchors and aliases (&name, *name, <<) are not accepted; "
                                                   "write the values out", problem_mark=event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue  # SafeLoader's own error names it
                if key in seen:
                    raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r} (first on line {seen[key]}); "
                                                       "merge the two into one", problem_mark=key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def parse_yaml(text: str, where: str, error: type[Exception] = DataError) -> Any:
    """YAML text (a file's, or a -S value) parsed with _strict_loader; errors name `where` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{where}{line}: not valid YAML: {problem}") from None


def load_yaml(path: str | Path, error: type[Exception] = DataError, max_bytes: int = YAML_MAX_BYTES) -> Any:
    """A YAML file: UTF-8, at most max_bytes, no duplicate keys, no anchors or aliases."""
    return parse_yaml(read_text_utf8(path, error, max_bytes), str(path), error)


def write_atomic(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so a killed run never leaves a complete-looking file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: NaN and infinity are not JSON, so they are written as null with a reason beside them."""
    write_atomic(path, json.dumps(null_non_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def null_non_finite(tree: Any) -> Any:
    """A copy of a metrics tree with each NaN or infinite number replaced by null and a sibling
    "<key>_null_reason" saying what it was (a reason the code already gave is kept)."""
    if isinstance(tree, dict):
        out: dict = {}
        for key, value in tree.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
                out.setdefault(f"{key}_null_reason", f"not a number ({value})")
            else:
                out[key] = null_non_finite(value)
        return out
    if isinstance(tree, list):
        return [None if isinstance(v, float) and not math.isfinite(v) else null_non_finite(v) for v in tree]
    return tree


def stable_adapter_config(folder: str | Path) -> None:
    """Sort the set-valued fields of a PEFT adapter_config.json in place. PEFT keeps target_modules as a
    set and writes it in iteration order, which follows the per-process hash seed: the same weights
    then get a different file, and DVC a different hash, on every run."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in ("target_modules", "exclude_modules"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True))  # as PEFT writes it, order aside


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def chunk_seed(key: str, index: int) -> int:
    """Each chunk's own seed: the same chunk gets the same seed however the run was interrupted."""
    return int(content_key("chunk", key, index), 16) % (2**31)


def run_chunks(items: list, chunk_size: int, produce: Callable[[list, int], list[dict]], progress_dir: str | Path,
               key: str, desc: str) -> list[dict]:
    """Apply produce(chunk, seed) to fixed chunks of items, resuming from earlier finished chunks.

    Returns the concatenated outputs in chunk order. The progress file is removed once all chunks are
    done and the caller has the result (callers write their outs atomically afterwards).
    """
    progress = Path(progress_dir) / f"{key}.jsonl"
    progress.parent.mkdir(parents=True, exist_ok=True)
    done: dict[int, list[dict]] = {}
    if progress.exists():
        with open(progress) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: that chunk is redone
                done[record["chunk"]] = record["rows"]
        # Rewrite without the cut-short line, so new chunks are not appended onto it.
        write_atomic(progress, "".join(json.dumps({"chunk": i, "rows": r}, ensure_ascii=False) + "\n"
                                       for i, r in done.items()))
        log.info("%s: resuming, %d chunks already done (%s)", desc, len(done), progress)
    chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
    with open(progress, "a") as f, tqdm(total=len(items), desc=desc, unit="item") as bar:
        bar.update(sum(len(chunks[i]) for i in done if i < len(chunks)))
        for index, chunk in enumerate(chunks):
            if index in done:
                continue
            rows = produce(chunk, chunk_seed(key, index))
            f.write(json.dumps({"chunk": index, "rows": rows}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done[index] = rows
            bar.update(len(chunk))
    return [row for index in range(len(chunks)) for row in done[index]]


class Progress:
    """The resumable work of one stage run: chunk files in one folder, named by one content key.

    `chunks` runs (and on a re-run resumes) one part of the work; `finish` removes every part's file, to
    be called once the stage's outs are written, so a run killed before then keeps what it had done.
    The part's name is appended to the key, and the key seeds each chunk: keep names stable.
    """

    def __init__(self, directory: str | Path, key: str):
        self.directory, self.key = Path(directory), key
        self._parts: list[str] = []

    def chunks(self, items: list, chunk_size: int, produce: Callable[[list, int], list[dict]], desc: str,
               part: str = "") -> list[dict]:
        key = self.key + part
        if key not in self._parts:
            self._parts.append(key)
        return run_chunks(items, chunk_size, produce, self.directory, key, desc)

    def finish(self) -> None:
        for key in self._parts:
            (self.directory / f"{key}.jsonl").unlink(missing_ok=True)


# ---- resumable training ---------------------------------------------------------------------------------
# A TrainingSession's state (adapter, optimizer, RNG, step) saved every N optimizer steps, so a re-run of a
# killed training stage continues from the last save. Like Progress, saves live in the cache's progress
# folder under a content key (Stage.checkpoints), never in the outs. Each save is written to a `.partial`
# folder, renamed into place, and only then named in `latest.json` (itself written atomically), so a
# kill at any moment leaves the previous save or the new one, never half of one. Batches are a pure
# function of the seed (character.train.loop.make_batches), so a resumed run sees exactly the remaining
# batches and ends with the weights an uninterrupted run would have.
LATEST = "latest.json"


class Checkpoints:
    """Saves of one training run in `directory`, every `every` optimizer steps (0: never)."""

    def __init__(self, directory: str | Path, every: int):
        self.directory, self.every = Path(directory), every

    def restore(self, session: "TrainingSession") -> tuple[int, dict[str, Any]]:
        """Load the last save into `session`; (steps already taken, the caller's extra state). (0, {}) if none."""
        if self.every and not hasattr(session, "save_state"):  # a backend that has not implemented it yet
            log.warning("%s cannot save its state: if killed, this stage restarts from zero",
                        type(session).__name__)
            self.every = 0
        latest = self.directory / LATEST
        if not self.every or not latest.exists():
            return 0, {}
        meta = json.loads(latest.read_text())
        session.load_state(self.directory / meta["state"])
        log.info("resuming training from step %d (%s)", meta["step"], self.directory / meta["state"])
        return int(meta["step"]), meta.get("extra", {})

    def due(self, step: int, total: int) -> bool:
        """Save after `step` optimizer steps? Never after the last: the outs are written right then."""
        return bool(self.every) and step % self.every == 0 and step < total

    def save(self, session: "TrainingSession", step: int, extra: dict[str, Any]) -> None:
        """Save after `step` optimizer steps; `extra` (JSON) comes back from `restore` (e.g. step metrics)."""
        name = f"step-{step:07d}"
        partial = self.directory / f"{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        session.save_state(partial)
        shutil.rmtree(self.directory / name, ignore_errors=True)
        os.replace(partial, self.directory / name)
        write_atomic(self.directory / LATEST, json.dumps({"step": step, "state": name, "extra": extra}))
        for old in self.directory.glob("step-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def finish(self) -> None:
        """The stage's outs are written: drop the saves."""
        shutil.rmtree(self.directory, ignore_errors=True)

"""Files: JSONL and JSON (atomic writes, no NaN), content hashes, and resumable chunked generation.

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
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from character.errors import DataError

log = logging.getLogger(__name__)

# The repo this package sits in (an editable install): shipped data and presets are read from here.
REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "data" / "shipped"


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}: not valid JSON: {exc}") from exc
    return rows


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

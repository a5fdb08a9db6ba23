"""Rewrite dvc.yaml's code deps as each stage's import closure (the one tests/unit/test_dvc_deps.py checks).

    python scripts/dvc_deps.py          # rewrite in place; non-code deps (data, constitutions) are kept
    python scripts/dvc_deps.py --check  # exit 1 if dvc.yaml would change

Every stage lists its script, the whole character/backends package (any backend may run it) and each
other module of ours it imports. Why a script and not ruamel round-tripping: dvc.yaml keeps its comments
and layout, and only the `deps:` lists of stages are touched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]

from test_dvc_deps import closure, stages  # noqa: E402  (the test owns the closure rule)


def code_deps() -> dict[str, list[str]]:
    out = {}
    for name, script, _ in stages():
        files = sorted(p.relative_to(ROOT).as_posix() for p in closure(ROOT / script))
        out[name] = [script, "character/backends"] + [f for f in files if not f.startswith("character/backends/")]
    return out


def rewrite(text: str, deps: dict[str, list[str]]) -> str:
    lines, out, stage, i = text.split("\n"), [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w+):\s*$", line):
            stage = m.group(1)
        if re.match(r"^\s+deps:\s*$", line) and stage in deps:
            indent = re.match(r"^(\s+)", lines[i + 1]).group(1)
            j, keep = i + 1, []
            while j < len(lines) and lines[j].startswith(indent + "- "):
                item = lines[j].strip()[2:]
                if not item.startswith(("character/", "stages/")):
                    keep.append(lines[j])
                j += 1
            out += [line] + [f"{indent}- {d}" for d in deps[stage]] + keep
            i = j
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


if __name__ == "__main__":
    path = ROOT / "dvc.yaml"
    old = path.read_text()
    new = rewrite(old, code_deps())
    if "--check" in sys.argv:
        sys.exit(0 if new == old else 1)
    path.write_text(new)

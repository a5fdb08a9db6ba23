"""dvc.yaml's deps are true: each stage lists every module of ours that its script imports.

The closure is computed statically: the stage script's imports, then each imported character/ module's
imports (function-level ones included, since that is where heavy imports live), transitively. A lazy
import that only some configurations reach (the Tinker backend) still counts: under that configuration
the stage runs it, so a change there must re-run the stage. A listed folder covers the modules inside it.
Package __init__ files that hold nothing but a docstring are not required. character/cost.py is not
followed: it serves --dry-run, which writes nothing, so it cannot change a stage's outs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def module_file(name: str) -> Path | None:
    """character.x.y -> character/x/y.py or character/x/y/__init__.py (None: not ours, or not found)."""
    if name != "character" and not name.startswith("character."):
        return None
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imports_of(path: Path) -> set[Path]:
    """Our modules a file imports anywhere in it, with the packages each import runs on the way."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from character.eval import benchmarks` imports a module; `from character.io import x` a name
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = module_file(".".join(parts[:i]))
                if file is not None:
                    found.add(file)
    return found


DRY_RUN_ONLY = {ROOT / "character" / "cost.py"}


def closure(script: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for dep in imports_of(path) - seen - DRY_RUN_ONLY:
            seen.add(dep)
            todo.append(dep)
    return {p for p in seen if not _docstring_only(p)}


def _docstring_only(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) or
        isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) for n in body)


def stages() -> list[tuple[str, str, list[str]]]:
    """(stage name, script path, deps) for every dvc.yaml stage (foreach templates as written)."""
    out = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        script = re.search(r"python (stages/\S+\.py)", body["cmd"]).group(1)
        out.append((name, script, body.get("deps", [])))
    return out


def covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name,script,deps", stages(), ids=[s[0] for s in stages()])
def test_stage_lists_every_module_it_imports(name, script, deps):
    assert script in deps, f"dvc.yaml: stage {name} does not list its own script {script}"
    missing = sorted(p.relative_to(ROOT).as_posix() for p in closure(ROOT / script) if not covered(p, deps))
    assert not missing, f"dvc.yaml: stage {name} runs code it does not list in deps: {missing}"


def test_closure_follows_function_level_and_package_imports(tmp_path):
    # The evaluate stage imports the judge only inside main(); the judge imports the backend contract.
    files = {p.relative_to(ROOT).as_posix() for p in closure(ROOT / "stages/evaluate.py")}
    assert {"character/eval/judge.py", "character/backends/base.py", "character/stage.py"} <= files
    assert "character/__init__.py" not in files  # a docstring and a version: nothing a stage runs
    assert "character/cost.py" not in files and "character/train/dpo.py" not in files
    assert not covered(ROOT / "character/eval/judge.py", ["character/ev", "character/eval.py"])
    assert covered(ROOT / "character/eval/judge.py", ["character/eval"])


def stage_params() -> list[tuple[str, str, list[str]]]:
    out = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        script = re.search(r"python (stages/\S+\.py)", body["cmd"]).group(1)
        out.append((name, script, [p for p in body.get("params", []) if isinstance(p, str)]))
    return out


@pytest.mark.parametrize("name,script,params", stage_params(), ids=[s[0] for s in stage_params()])
def test_a_stage_listing_some_evaluation_params_reads_no_other(name, script, params):
    """A stage that declares single `evaluation.<field>` params (not the whole section) re-runs only when
    those change, so none of its code may read another field: `.<field>` appears nowhere in its closure
    (params.py, which defines them, aside; `model_dump()`, a resume key, is not a read of one field)."""
    from character.params import EvalParams
    declared = {p.split(".", 1)[1] for p in params if p.startswith("evaluation.")}
    if not declared or "evaluation" in params:
        return
    undeclared = set(EvalParams.model_fields) - declared
    files = (closure(ROOT / script) | {ROOT / script}) - {ROOT / "character" / "params.py"}
    reads = sorted(f"{p.relative_to(ROOT).as_posix()}: {field}" for p in files for field in undeclared
                   if re.search(rf"\.{field}\b", p.read_text()))
    assert not reads, f"dvc.yaml: stage {name} reads evaluation params it does not declare: {reads}"


def elicitation_reads(path: Path) -> set[str]:
    """The fields read as `<x>.elicitation.<field>` or `elicitation.<field>` in a module's code (an AST walk:
    SamplingParams has a `guidance` of its own, and error messages name `elicitation.guidance` in text)."""
    def is_elicitation(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "elicitation") or \
            (isinstance(node, ast.Attribute) and node.attr == "elicitation")
    return {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute) and is_elicitation(n.value)}


@pytest.mark.parametrize("name,script,params", stage_params(), ids=[s[0] for s in stage_params()])
def test_a_stage_listing_some_elicitation_params_reads_no_other(name, script, params):
    """The same for `elicitation.<field>`: introspection and the evaluation's answers use the teacher's
    context (system, short_traits, few_shot) but not guidance, so a guidance change re-runs pairs alone.
    A stage that passes the whole section on (`model_dump()`, `for_persona`) must declare all of it."""
    from character.params import ElicitationParams
    declared = {p.split(".", 1)[1] for p in params if p.startswith("elicitation.")}
    if not declared or "elicitation" in params:
        return
    files = (closure(ROOT / script) | {ROOT / script}) - {ROOT / "character" / "params.py"}
    reads = sorted(f"{p.relative_to(ROOT).as_posix()}: {field}" for p in files
                   for field in elicitation_reads(p) - declared)
    assert not reads, f"dvc.yaml: stage {name} reads elicitation params it does not declare: {reads}"
    assert declared <= set(ElicitationParams.model_fields), declared


def test_the_elicitation_reads_check_sees_a_read_and_not_a_message(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(params, elicitation, s):\n    raise ValueError('set elicitation.guidance: 1.0')\n"
                      "    return params.elicitation.few_shot, elicitation.guidance, s.guidance\n")
    assert elicitation_reads(module) == {"few_shot", "guidance"}


@pytest.mark.parametrize("name", ["eval_base", "eval_answers"])
def test_the_answer_stages_declare_exactly_the_fields_their_seeds_hash(name):
    """eval_base and eval_answers seed each chunk from a key holding EvalParams.answer_settings(). A field in
    that key but not declared would move every seed unseen by DVC (as coherence_rivals once did); a field
    declared but not in the key would re-run the stage to the same seeds."""
    from character.params import EvalParams
    body = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    body = body.get("do", body)
    declared = {p.split(".", 1)[1] for p in body["params"] if isinstance(p, str) and p.startswith("evaluation.")}
    assert declared == set(EvalParams.ANSWER_FIELDS), declared ^ set(EvalParams.ANSWER_FIELDS)
    assert set(EvalParams.ANSWER_FIELDS) <= set(EvalParams.model_fields)
    assert set(EvalParams().answer_settings()) == set(EvalParams.ANSWER_FIELDS)

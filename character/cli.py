"""The `character` command: validate, import-constitution, models, estimate, tinker-download, tinker-keep,
preset, chat, serve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `character estimate --stage` choices (character.cost.STAGES, kept here so --help imports nothing heavy).
PRICED_STAGES = ("prompts", "pairs", "dpo", "introspection", "sft", "rlaif_model", "rlaif_judge", "eval_base",
                 "eval_answers", "evaluate")


MAX_WARNINGS = 20  # per file: a broken file gave 779k warning lines


def print_issues(issues: list[str], indent: str = "       - ") -> None:
    """Quality warnings, each once, at most MAX_WARNINGS, then how many more there were."""
    unique = list(dict.fromkeys(issues))
    for issue in unique[:MAX_WARNINGS]:
        print(f"{indent}{issue}")
    if len(unique) > MAX_WARNINGS:
        print(f"{indent}... and {len(unique) - MAX_WARNINGS} more")
    if len(unique) < len(issues):
        print(f"{indent}({len(issues) - len(unique)} repeated warnings not shown)")


def cmd_validate(args) -> int:
    from character.constitution import ConstitutionError, load_constitution, quality_issues
    from character.errors import EXIT_INPUT
    from character.params import ParamsError, load_params

    failed = 0
    try:
        params = load_params(args.params)
        print(f"ok   {args.params}: student {params.model}, teacher {params.teacher}, judge {params.judge}, "
              f"personas {', '.join(params.personas)}")
        missing = [p for p in params.personas if not (Path(args.constitutions) / f"{p}.yaml").exists()]
        if missing:
            print(f"FAIL {args.params}: personas: no constitution for {', '.join(missing)}")
            failed += 1
    except ParamsError as exc:
        print(f"FAIL {exc}")
        failed += 1
    paths = args.files or sorted(Path(args.constitutions).glob("*.yaml"))
    for path in paths:
        try:
            c = load_constitution(path)
        except ConstitutionError as exc:
            print(f"FAIL {exc}")
            failed += 1
            continue
        issues = quality_issues(c)
        questions = sum(len(t.questions) for t in c.traits)
        print(f"{'warn' if issues else 'ok  '} {path}: {len(c.traits)} traits, {questions} seed questions")
        print_issues(issues)
        if issues and args.strict:
            failed += 1
    return EXIT_INPUT if failed else 0


def cmd_import(args) -> int:
    from character.constitution import dump_constitution, import_official_json, quality_issues
    from character.errors import ConstitutionError
    from character.io import write_atomic
    from character.params import PLAIN_NAME

    name = args.name or Path(args.json).stem.lower().replace(" ", "_")
    if not PLAIN_NAME.match(name):
        raise ConstitutionError(f"{args.json}: persona name {name!r} is not a plain name (lower-case letters, digits, "
                                "- and _, starting with a letter); pass --name NAME")
    out = Path(args.out or f"constitutions/{name}.yaml")
    if out.exists() and not args.force:
        raise ConstitutionError(f"{out}: exists; pass --force to overwrite it, or --out another file")
    if not out.parent.is_dir():
        raise ConstitutionError(f"{out}: folder {out.parent} does not exist; create it or pass another --out")
    if out.stem != name:
        raise ConstitutionError(f"{out}: the file must be named after the persona ({name}.yaml); pass --name {out.stem}")
    c = import_official_json(args.json, name, args.description)
    write_atomic(out, dump_constitution(c))
    print(f"wrote {out}: {len(c.traits)} traits, "
          f"{sum(len(t.questions) + len(t.additional_questions) for t in c.traits)} questions")
    print_issues(quality_issues(c), "  warn: ")
    return 0


def cmd_models(args) -> int:
    from character.params import load_params

    params = load_params(args.params)
    for alias, spec in params.models.items():
        used = [r for a, r in [(params.model, "student"), (params.teacher, "teacher"), (params.judge, "judge")] if a == alias]
        where = spec.id
        if spec.backend == "local" and spec.id.startswith("embedded:"):
            from character.backends.weights import ModelNotFound, embedded_gguf
            try:
                where = f"{spec.id} -> {embedded_gguf(spec.id.split(':', 1)[1])}"
            except ModelNotFound as exc:
                where = f"{spec.id} (missing: {exc})"
        print(f"{alias:16} {spec.backend:7} {where}" + (f"  [{', '.join(used)}]" if used else "")
              + (f"  ({spec.note})" if spec.note else ""))
    return check_tinker_models(params) if args.check else 0


def check_tinker_models(params) -> int:
    """Ask the live service which registry models it still offers; 1 if a model in use is retired."""
    import os

    from character.backends.tinker import preflight

    aliases = {a: s for a, s in params.models.items() if s.backend == "tinker"}
    if not os.environ.get("TINKER_API_KEY") and not Path("~/.tinker/credentials.json").expanduser().exists():
        print("\nno TINKER_API_KEY: the live check is skipped (set it to ask the service)")
        return 0
    _, offered = preflight(params.tinker.connect_timeout_s)  # unreachable or refused: one line, exit 2 (main)
    print(f"\nTinker offers {len(offered)} models now:")
    in_use = {params.model, params.teacher, params.judge}
    retired = [a for a, s in aliases.items() if s.id not in offered]
    for alias, spec in aliases.items():
        print(f"{alias:16} {spec.id:40} {'RETIRED (not offered)' if alias in retired else 'ok'}")
    unlisted = sorted(set(offered) - {s.id for s in aliases.values()})
    if unlisted:
        print(f"offered but not in the registry: {', '.join(unlisted)}")
    return 1 if in_use & set(retired) else 0


def load_with_overrides(path: str, sets: list[str]):
    """params.yaml with `-S key.path=value` overrides (values parsed as YAML), validated, nothing written."""
    from character.params import ParamsError, parse_override, read_params_file, validate_params

    data = read_params_file(path)
    for item in sets:
        (*parents, leaf), value = parse_override(item, path)
        node = data
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"{path}: -S {item!r}: {'.'.join(parents[:i + 1])} is a value, not a section")
        node[leaf] = value
    return validate_params(data, f"{path} + -S {' '.join(sets)}" if sets else path)


def cmd_estimate(args) -> int:
    from character.cost import plan

    sets = list(args.set) + [f"{role}={alias}" for role in ("model", "teacher", "judge")
                             if (alias := getattr(args, role))]
    params = load_with_overrides(args.params, sets)
    print(plan(params, args.persona, args.stage))
    return 0


def cmd_tinker_download(args) -> int:
    from character.backends.tinker import download_adapter
    from character.params import load_params

    out = download_adapter(args.folder, args.out, args.peft, args.allow_hub_download,
                           load_params(args.params).tinker.connect_timeout_s)
    print(f"wrote {out['raw']}: the Tinker adapter as saved (adapter_model.safetensors, adapter_config.json)")
    if out["peft"]:
        print(f"wrote {out['peft']}: a PEFT LoRA adapter (load with peft.PeftModel.from_pretrained)")
    return 0


def cmd_tinker_keep(args) -> int:
    from character.backends.tinker import keep_checkpoint
    from character.params import load_params

    if (args.days is None) == (not args.forever):
        print("error: give --days N or --forever", file=sys.stderr)
        return 2
    record = keep_checkpoint(args.folder, None if args.forever else args.days,
                             load_params(args.params).tinker.connect_timeout_s)
    print(f"{args.folder}: {record['sampler_path']} and its training state now "
          + (f"expire {record['expires_at']}" if record["expires_at"] else "never expire"))
    return 0


def cmd_preset(args) -> int:
    # ruamel.yaml's round trip (DVC's own YAML library) rewrites only the values the preset changes, so
    # params.yaml keeps its comments, order and flow-style sections.
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    from character.params import apply_preset

    merged = apply_preset(args.params, args.name)
    yaml = YAML()
    yaml.width = 110
    doc = yaml.load(Path(args.params))

    def update(node, new) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                update(node[key], value)
            elif node.get(key) != value:
                if isinstance(value, list) and isinstance(node.get(key), CommentedSeq) and node[key].fa.flow_style():
                    value = CommentedSeq(value)
                    value.fa.set_flow_style()  # [a, b] stays [a, b]
                node[key] = value

    update(doc, merged)
    with Path(args.params).open("w") as f:
        yaml.dump(doc, f)
    print(f"{args.params}: applied preset {args.name}")
    return 0


def cmd_chat(args) -> int:
    from character.backends.base import SamplingParams
    from character.backends.base import AdapterRef
    from character.backends.local import LocalBackend
    from character.constitution import find_constitution, teacher_context
    from character.errors import BackendUnavailable, ParamsError
    from character.params import load_params

    params = load_params(args.params)
    alias = args.model or params.model
    if alias not in params.models:
        raise ParamsError(f"--model {alias!r}: unknown model alias (known: {', '.join(sorted(params.models))})")
    spec = params.spec(alias)
    if spec.backend != "local":
        raise BackendUnavailable(f"--model {alias!r}: a {spec.backend} model; chat runs local models (name one, e.g. "
                                 "--model smollm2), or talk to a served model with any OpenAI client")
    # Everything that can be wrong is checked before the model loads (30 s and more).
    constitution = find_constitution(args.constitution) if args.constitution else None
    model_id, adapter = spec.id, None
    if args.adapter:
        path = Path(args.adapter)
        if not path.exists():
            raise FileNotFoundError(2, "no such adapter folder", str(path))
        if (path / "tinker.json").exists():
            raise BackendUnavailable(f"{path}: a Tinker checkpoint; `character tinker-download {path} --out DIR --peft BASE` "
                                     "makes a PEFT folder for its base model")
        if (path / "config.json").exists():  # merged weights (compose method fold)
            model_id = str(path)
        elif (path / "adapter_config.json").exists() or (path / "ref.json").exists():
            adapter = AdapterRef.read(path)
        else:
            raise BackendUnavailable(f"{path}: neither a PEFT adapter (adapter_config.json) nor merged weights "
                                     "(config.json); pass a stage's out, e.g. models/<persona>/final")
    backend = LocalBackend(model_id, cache_dir=params.runtime.cache_dir, threads=params.runtime.threads,
                           device=params.runtime.device)
    # With a constitution: the teacher's context under params.elicitation (system prompt, few-shot turns),
    # what the pairs stage and the evaluation's system_prompt method use.
    history = [] if constitution is None else \
        teacher_context(constitution, spec.assistant_name, params.elicitation).before([])
    sampling = SamplingParams(temperature=args.temperature, top_p=0.95, max_tokens=args.max_tokens,
                              repetition_penalty=1.1, seed=args.seed)
    messages = list(args.message) if args.message else None
    while True:
        if messages is not None:
            if not messages:
                return 0
            text = messages.pop(0)
            print(f"> {text}")
        else:
            try:
                text = input("> ").strip()
            except EOFError:
                return 0
            if text in ("", "/quit", "/exit"):
                return 0
        history.append({"role": "user", "content": text})
        [[reply]] = backend.sample([history], sampling, adapter=adapter)
        print(reply.text + ("" if reply.finish_reason == "stop" else " [...]"))
        history.append({"role": "assistant", "content": reply.text})


def cmd_serve(args) -> int:
    import logging

    from character import serve
    logging.getLogger().setLevel(logging.INFO)  # the address, the models and aiohttp's access log (no headers)
    return serve.main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="character", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check params.yaml and constitutions (errors name file and field)")
    p.add_argument("files", nargs="*", help="constitution files (default: all in constitutions/)")
    p.add_argument("--constitutions", default="constitutions")
    p.add_argument("--strict", action="store_true", help="quality warnings fail too")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("import-constitution", help="convert the official code's JSON constitution to YAML")
    p.add_argument("json")
    p.add_argument("--name", help="persona name (default: the file stem)")
    p.add_argument("--description")
    p.add_argument("--out", help="default: constitutions/<name>.yaml")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("models", help="list model aliases, their backend and where they resolve")
    p.add_argument("--check", action="store_true", help="ask the live Tinker service (needs TINKER_API_KEY) "
                   "which registry models it offers; exit 1 if one in use is retired")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("estimate", help="expected tokens and USD per stage, from params, before spending anything")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param as `dvc exp run -S` does (repeatable), e.g. -S model=llama70b")
    p.add_argument("--model", help="student alias (same as -S model=...)")
    p.add_argument("--teacher", help="teacher alias")
    p.add_argument("--judge", help="judge alias")
    p.add_argument("--persona", help="one persona (default: all in params)")
    p.add_argument("--stage", choices=PRICED_STAGES, help="one stage")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("tinker-download", help="download a stage's Tinker adapter (before it expires) into OUT/tinker")
    p.add_argument("folder", help="a Tinker stage out holding tinker.json, e.g. models/loving/sft")
    p.add_argument("--out", required=True, help="new folder; the raw adapter goes to OUT/tinker, always kept")
    p.add_argument("--peft", metavar="BASE", help="also convert to PEFT (OUT/peft), reading the base model's "
                   "safetensors headers from the local folder BASE")
    p.add_argument("--allow-hub-download", action="store_true", help="let --peft name a hub id: downloads the "
                   "whole base model (~140 GB for a 70B)")
    p.set_defaults(func=cmd_tinker_download)

    p = sub.add_parser("tinker-keep", help="extend a stage's Tinker checkpoints' lifetime (sampler copy and state)")
    p.add_argument("folder", help="a Tinker stage out holding tinker.json")
    p.add_argument("--days", type=float, help="expire this many days from now (1/24 to 3650)")
    p.add_argument("--forever", action="store_true", help="remove the expiry")
    p.set_defaults(func=cmd_tinker_keep)

    p = sub.add_parser("preset", help="merge presets/<name>.yaml (smoke, default, paper) into params.yaml")
    p.add_argument("name")
    p.set_defaults(func=cmd_preset)

    p = sub.add_parser("chat", help="talk to a model, optionally with an adapter and/or a constitution")
    p.add_argument("--model", help="model alias (default: params.yaml model)")
    p.add_argument("--adapter", help="adapter folder, or a merged model folder (e.g. models/<persona>/final)")
    p.add_argument("--constitution", help="persona whose constitution becomes the system prompt")
    p.add_argument("-m", "--message", action="append", help="send this message (repeatable) instead of a prompt loop")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve the base model and trained personas over an OpenAI-compatible API")
    p.add_argument("--model", help="base model alias (default: params.yaml model)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="serve a persona as model NAME (repeatable), e.g. sarcastic=models/sarcastic/final")
    p.add_argument("--constitution", action="append", default=[], metavar="NAME",
                   help="also serve NAME+system_prompt: the base with constitutions/NAME.yaml as system prompt "
                        "(added for every --adapter whose persona is known; repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", metavar="VAR", help="require `Authorization: Bearer $VAR` (read from the environment)")
    p.add_argument("--max-pending", type=int, default=8, help="requests queued or running before 503 (default 8)")
    p.add_argument("--max-body-kb", type=int, default=1024, help="larger request bodies get 413 (default 1024)")
    p.add_argument("--max-tokens", type=int, default=1024, help="ceiling and default for max_tokens (default 1024)")
    p.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from character.errors import EXIT_INPUT, CharacterError, one_line
    try:
        return args.func(args)
    except (CharacterError, FileNotFoundError, FileExistsError) as exc:  # input errors: one line, no traceback, one exit code
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())

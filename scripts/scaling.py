"""Scaling recipe: one persona trained on several student models, one metric plotted against model size.

    python scripts/scaling.py queue --persona sarcastic --models smollm2 qwen25-0.5b qwen3-8b qwen3-32b
    dvc queue start -j 1                  # runs the queue in the background; `dvc queue status` to follow
    python scripts/scaling.py plot --persona sarcastic

`queue` adds one DVC experiment per model alias (`dvc exp run --queue -n scale-<persona>-<alias>
-S model=<alias> -S personas=[<persona>]`), so each run is recorded with its params and metrics and can
be pushed, shown and diffed like any other experiment. `plot` reads the finished ones (`dvc exp show`)
and writes plots/scaling/<persona>.csv (alias, billions of parameters, metric) and a PNG.

Which models run where: `smollm2` is embedded and runs offline on a CPU; `smollm2-hub` and `qwen25-0.5b`
need the Hugging Face hub; the 8B-670B aliases are `backend: tinker` and need TINKER_API_KEY (check
`character estimate --model ALIAS` first). The teacher stays whatever params.yaml says.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

# Total parameters in billions, from each model's card (MoE models: total, not active). Plot positions
# only; the registry in params.yaml says where each alias resolves.
PARAMS_B = {
    "smollm2": 0.135, "smollm2-hub": 0.135, "qwen25-0.5b": 0.494, "llama8b": 8.03, "qwen3-8b": 8.19,
    "qwen3-32b": 32.8, "llama70b": 70.6, "gpt-oss-120b": 117.0, "deepseek-v3.1": 671.0,
}
DEFAULT_METRIC = "metrics/dpo/{persona}.json:heldout_accuracy"


def queue(persona: str, models: list[str], extra: list[str], targets: list[str]) -> None:
    unknown = [m for m in models if m not in PARAMS_B]
    if unknown:
        sys.exit(f"error: no size known for {', '.join(unknown)}: add it to PARAMS_B in {__file__}")
    for alias in models:
        cmd = ["dvc", "exp", "run", "--queue", "-n", f"scale-{persona}-{alias}", "-S", f"model={alias}",
               "-S", f"personas=[{persona}]"] + [a for s in extra for a in ("-S", s)] + targets
        print("+", " ".join(cmd))
        subprocess.run(cmd, check=True)
    print("queued; run them with `dvc queue start -j 1`, then `python scripts/scaling.py plot ...`")


def collect(persona: str, metric: str) -> list[dict]:
    """One row per finished experiment named scale-<persona>-*, from `dvc exp show` (all commits)."""
    from dvc.api import exp_show

    path, key = metric.format(persona=persona).split(":", 1)
    rows = []
    for exp in exp_show(num=-1):
        name = exp.get("Experiment") or ""
        if not name.startswith(f"scale-{persona}-"):
            continue
        # exp_show names a column by its key, or by path:key when two files share the key
        value = exp.get(f"{path}:{key}", exp.get(key))
        alias = exp.get("model")
        if value is None or alias not in PARAMS_B:
            print(f"skip {name}: {'no ' + key if value is None else 'unknown model ' + str(alias)}")
            continue
        rows.append({"model": alias, "params_b": PARAMS_B[alias], key: float(value), "experiment": name})
    return sorted(rows, key=lambda r: r["params_b"])


def plot(persona: str, metric: str, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = collect(persona, metric)
    if not rows:
        sys.exit(f"error: no finished experiment named scale-{persona}-* with {metric}; run `queue` first")
    key = metric.split(":", 1)[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{persona}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["params_b"] for r in rows], [r[key] for r in rows], marker="o")
    for r in rows:
        ax.annotate(r["model"], (r["params_b"], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xscale="log", xlabel="student parameters (billions, log scale)", ylabel=key,
           title=f"{persona}: {metric.format(persona=persona)}")
    fig.tight_layout()
    fig.savefig(out_dir / f"{persona}.png", dpi=120)
    print(f"wrote {out_dir / persona}.csv and .png ({len(rows)} models)")
    for r in rows:
        print(f"  {r['model']:14} {r['params_b']:8.3f}B  {key} = {r[key]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queue", help="queue one experiment per model")
    q.add_argument("--persona", required=True)
    q.add_argument("--models", nargs="+", required=True, help=f"aliases: {', '.join(PARAMS_B)}")
    q.add_argument("-S", dest="extra", action="append", default=[], help="more params, as dvc exp run -S")
    q.add_argument("--targets", nargs="*", default=[], help="stages to run up to (default: the whole pipeline)")
    p = sub.add_parser("plot", help="plot the finished experiments' metric against model size")
    p.add_argument("--persona", required=True)
    p.add_argument("--metric", default=DEFAULT_METRIC, help="FILE:KEY, {persona} filled in (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("plots/scaling"))
    args = parser.parse_args()
    if args.cmd == "queue":
        queue(args.persona, args.models, args.extra, args.targets)
    else:
        plot(args.persona, args.metric, args.out)


if __name__ == "__main__":
    main()

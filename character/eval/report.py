"""The evaluation's outputs for people: matplotlib PNGs, CSV plot data for DVC, and one self-contained page.

The HTML page embeds its images as base64 and has no scripts or external links, so it opens offline.
The Markdown twin links the PNGs in plots/eval/.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

from character.eval.robustness import DELTA_RIVALS


def _figure():
    import matplotlib
    matplotlib.use("Agg")  # no display here or in CI
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _figure().close(fig)


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r)) or ["empty"]  # rows may differ (base: no deltas)
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def interval(cell: dict | None, key: str = "rate") -> str:
    """"0.42 [0.31, 0.54]" from a {rate|delta|mean|value, lo, hi} cell ("" when absent or null)."""
    if not cell or cell.get(key) is None:
        return ""
    return f"{cell[key]:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}]"


def plot_tables(metrics: dict, ratings: dict, plots_dir: Path) -> dict[str, list[dict]]:
    """CSV tables (DVC plot data) and PNGs; returns the tables."""
    tables: dict[str, list[dict]] = {"robustness": [], "coherence": [], "capabilities": [], "traits": [],
                                     "expression": [], "top_traits": [], "markers": []}
    for mk, groups in metrics["robustness"].get("methods", {}).items():
        for condition, cell in groups.items():
            for key, rate in cell.items():
                row = {"method": mk, "condition": condition, "persona": key.split("/", 1)[1], "rate": rate["rate"],
                       "lo": rate["lo"], "hi": rate["hi"], "n": rate["n"]}
                for rival in DELTA_RIVALS:
                    d = rate.get(f"delta_vs_{rival}")
                    if d and d.get("delta") is not None:
                        row.update({f"delta_vs_{rival}": d["delta"], f"delta_vs_{rival}_lo": d["lo"],
                                    f"delta_vs_{rival}_hi": d["hi"]})
                tables["robustness"].append(row)
    for persona, rivals in metrics["coherence"].items():
        for name, s in rivals.items():
            w = s["win_share"]
            tables["coherence"].append({"persona": persona, "comparison": name, "win_share": w["mean"],
                                        "lo": w["lo"], "hi": w["hi"], "pairs": s["pairs"], "decisive": s["decisive"]})
    for mk, benches in metrics["capabilities"].items():
        for name, cell in benches.items():
            row = {"method": mk, "benchmark": name, "accuracy": cell["accuracy"]["rate"], "lo": cell["accuracy"]["lo"],
                   "hi": cell["accuracy"]["hi"], "n": cell["accuracy"]["n"]}
            d = cell.get("delta_vs_base")
            if d and d.get("delta") is not None:
                row.update({"delta_vs_base": d["delta"], "delta_lo": d["lo"], "delta_hi": d["hi"]})
            tables["capabilities"].append(row)
    for persona, markers in metrics.get("markers", {}).items():
        for marker, methods in markers.items():
            for mk, cell in methods.items():
                if not isinstance(cell, dict) or "mean" not in cell:
                    continue
                row = {"persona": persona, "marker": marker, "method": mk, "mean": cell["mean"]["mean"],
                       "lo": cell["mean"]["lo"], "hi": cell["mean"]["hi"]}
                d = cell.get("delta_vs_base")
                if d and d.get("delta") is not None:
                    row.update({"delta_vs_base": d["delta"], "delta_lo": d["lo"], "delta_hi": d["hi"],
                                "as_predicted": cell.get("moved_as_predicted")})
                for rival in ("system_prompt", "dpo"):  # trained methods against the prompted baseline; final: dpo
                    if cell.get(f"delta_vs_{rival}"):
                        row[f"- {rival}"] = interval(cell[f"delta_vs_{rival}"], "delta")
                tables["markers"].append(row)
    for mk, groups in ratings.items():
        counts = groups.get("preference", {}).get("comparisons_per_trait", {})
        for trait, score in groups.get("preference", {}).get("bradley_terry", {}).items():
            if trait in counts:  # traits never compared have no rating, only the prior
                tables["traits"].append({"method": mk, "trait": trait, "rating": round(score, 1),
                                         "elo": round(groups["preference"]["elo"][trait], 1),
                                         "comparisons": counts[trait]})
    for mk, groups in ratings.items():
        if "preference" in groups:
            counts = groups["preference"]["comparisons_per_trait"]
            ranked = sorted(((t, v) for t, v in groups["preference"]["bradley_terry"].items() if t in counts),
                            key=lambda kv: -kv[1])
            movers = metrics["revealed"].get(mk, {}).get("movers", {})
            tables["top_traits"].append({"method": mk, "top": ", ".join(t for t, _ in ranked[:6]),
                                         "bottom": ", ".join(t for t, _ in ranked[-4:]),
                                         "risers_vs_base": ", ".join(t for t, _ in movers.get("risers", [])),
                                         "fallers_vs_base": ", ".join(t for t, _ in movers.get("fallers", [])),
                                         "judge_informative": metrics["revealed"].get(mk, {}).get("judge_informative")})
    for mk, m in metrics["revealed"].items():
        for persona, rate in m.get("expression_rate", {}).items():
            tables["expression"].append({"method": mk, "persona": persona, "rate": rate["rate"], "lo": rate["lo"],
                                         "hi": rate["hi"], "n": rate["n"]})
    figures = plots_dir / "figures"  # one DVC out: which PNGs exist depends on the run
    for name, rows in tables.items():
        write_csv((figures if name in ("capabilities", "top_traits", "markers") else plots_dir) / f"{name}.csv", rows)

    plt = _figure()
    # Robustness: in-character rate with its interval, per method, plain / suffixed / prefill, per persona.
    rob = [r for r in tables["robustness"] if r["condition"] in ("none", "suffixed", "prefill") and r["rate"] is not None]
    personas = sorted({r["persona"] for r in rob})
    if personas:
        fig, axes = plt.subplots(1, len(personas), figsize=(6 * len(personas), 3.8), squeeze=False)
        for ax, persona in zip(axes[0], personas):
            mine = [r for r in rob if r["persona"] == persona and (r["method"].startswith(persona + "/")
                                                                  or r["method"] in ("base", "base_resampled"))]
            names = list(dict.fromkeys(r["method"].split("/")[-1] for r in mine))
            for j, condition in enumerate(("none", "suffixed", "prefill")):
                cells = {r["method"].split("/")[-1]: r for r in mine if r["condition"] == condition}
                xs = [i + 0.27 * j for i in range(len(names))]
                ys = [cells[n]["rate"] if n in cells else 0 for n in names]
                err = [[max(0.0, y - cells[n]["lo"]) if n in cells else 0 for n, y in zip(names, ys)],
                       [max(0.0, cells[n]["hi"] - y) if n in cells else 0 for n, y in zip(names, ys)]]
                ax.bar(xs, ys, 0.27, yerr=err, capsize=2, label=condition)
            ax.set_xticks([i + 0.27 for i in range(len(names))], names, rotation=25)
            ax.set_ylim(0, 1)
            ax.set_title(f"{persona}: in-character rate (frozen classifier), 95% CI")
        axes[0][0].legend(fontsize=8)
        _save(fig, figures / "robustness.png")
    # Trait ratings: histogram per method over compared traits, the spread a persona should widen.
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for mk, groups in ratings.items():
        if "preference" in groups:
            counts = groups["preference"]["comparisons_per_trait"]
            ax.hist([v for t, v in groups["preference"]["bradley_terry"].items() if t in counts], bins=30,
                    histtype="step", label=mk)
    ax.set_xlabel("Bradley-Terry rating (Elo scale), compared traits only")
    ax.set_title("Revealed trait preferences")
    ax.legend(fontsize=7)
    _save(fig, figures / "trait_ratings.png")
    # Coherence: final's share of its games, with intervals.
    if tables["coherence"]:
        fig, ax = plt.subplots(figsize=(7, 3))
        rows = tables["coherence"]
        ax.barh([f"{r['persona']}: {r['comparison']}" for r in rows], [r["win_share"] or 0 for r in rows],
                xerr=[[max(0.0, (r["win_share"] or 0) - (r["lo"] or 0)) for r in rows],
                      [max(0.0, (r["hi"] or 0) - (r["win_share"] or 0)) for r in rows]], capsize=2)
        ax.axvline(0.5, color="gray", linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_title("Coherence: final model's share of games (both orders), 95% CI")
        _save(fig, figures / "coherence.png")
    return tables


def _img(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k, '')))}</td>" for k in keys) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _table_md(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v)


def write_report(path_html: Path, path_md: Path, side_by_side: list[dict], headline: list[dict],
                 tables: dict[str, list[dict]], plots_dir: Path, notes: list[str]) -> None:
    """side_by_side: rows {prompt, answers: {method key: answer}}; headline: one row per method."""
    css = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}table{border-collapse:collapse;"
           "font-size:13px}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
           ".sbs td{max-width:300px;white-space:pre-wrap}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Character evaluation</title>"
             f"<style>{css}</style></head><body><h1>Character evaluation</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts += ["<h2>Summary per method</h2>", _table_html(headline)]
    for name in ("robustness", "trait_ratings", "coherence"):
        parts.append(_img(plots_dir / "figures" / f"{name}.png"))
    parts += ["<h2>Judge-free persona markers</h2>", _table_html(tables["markers"]),
              "<h2>Revealed trait preferences (Bradley-Terry ranking)</h2>", _table_html(tables["top_traits"]),
              "<h2>Coherence</h2>", _table_html(tables["coherence"]),
              "<h2>Capabilities</h2>", _table_html(tables["capabilities"]),
              "<h2>Side by side</h2><table class='sbs'>"]
    methods = sorted({m for row in side_by_side for m in row["answers"]}, key=lambda m: (m != "base", m))
    parts.append("<tr><th>prompt</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
    for row in side_by_side:
        parts.append(f"<tr><td><b>{html.escape(row['prompt'])}</b></td>"
                     + "".join(f"<td>{html.escape(row['answers'].get(m, ''))}</td>" for m in methods) + "</tr>")
    parts.append("</table></body></html>")
    path_html.parent.mkdir(parents=True, exist_ok=True)
    path_html.write_text("".join(parts))

    md = ["# Character evaluation\n", *[n + "\n" for n in notes], "## Summary per method\n", _table_md(headline)]
    md += [f"![{n}](../plots/eval/figures/{n}.png)\n" for n in ("robustness", "trait_ratings", "coherence")
           if (plots_dir / "figures" / f"{n}.png").exists()]
    md += ["## Judge-free persona markers\n", _table_md(tables["markers"]),
           "## Revealed trait preferences (Bradley-Terry ranking)\n", _table_md(tables["top_traits"]),
           "## Coherence\n", _table_md(tables["coherence"]), "## Capabilities\n", _table_md(tables["capabilities"]),
           "## Side by side\n"]
    for row in side_by_side:
        md.append(f"### {row['prompt']}\n")
        md += [f"- **{m}**: {row['answers'].get(m, '').replace(chr(10), ' ')}" for m in methods]
        md.append("")
    path_md.write_text("\n".join(md) + "\n")

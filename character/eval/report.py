"""The evaluation's outputs for people: matplotlib PNGs, CSV plot data for DVC, and one self-contained page.

The HTML page embeds its images as base64 and has no scripts or external links, so it opens offline.
The Markdown twin links the PNGs in plots/eval/.
"""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path


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


def plot_tables(metrics: dict, ratings: dict, plots_dir: Path) -> dict[str, list[dict]]:
    """CSV tables (DVC plot data) and PNGs; returns the tables."""
    tables: dict[str, list[dict]]
    tables = {"robustness": [], "coherence": [], "capabilities": [], "traits": [], "expression": [], "top_traits": []}
    for persona, methods in metrics["robustness"]["binary"].items():
        for method, m in methods.items():
            for condition, s in m["per_condition"].items():
                tables["robustness"].append({"persona": persona, "method": method, "condition": condition,
                                             "macro_f1": round(s["macro_f1"], 4),
                                             "in_character_rate": round(s["in_character_rate"], 4)})
    for persona, rivals in metrics["coherence"].items():
        for name, s in rivals.items():
            tables["coherence"].append({"persona": persona, "comparison": name, "win_rate": s["win_rate"],
                                        "sem": s["sem"], "decided": s["decided"]})
    for mk, row in metrics["capabilities"].items():
        tables["capabilities"].append({"method": mk, **{k: round(v, 4) for k, v in row.items()}})
    for mk, groups in ratings.items():
        for trait, score in groups.get("preference", {}).get("bradley_terry", {}).items():
            tables["traits"].append({"method": mk, "trait": trait, "rating": round(score, 1),
                                     "elo": round(groups["preference"]["elo"][trait], 1)})
    for mk, groups in ratings.items():
        if "preference" in groups:
            ranked = sorted(groups["preference"]["bradley_terry"].items(), key=lambda kv: -kv[1])
            movers = metrics["revealed"].get(mk, {}).get("movers", {})
            tables["top_traits"].append({"method": mk, "top": ", ".join(t for t, _ in ranked[:6]),
                                         "bottom": ", ".join(t for t, _ in ranked[-4:]),
                                         "risers_vs_base": ", ".join(t for t, _ in movers.get("risers", [])),
                                         "fallers_vs_base": ", ".join(t for t, _ in movers.get("fallers", []))})
    for mk, m in metrics["revealed"].items():
        for persona, rate in m["expression_rate"].items():
            tables["expression"].append({"method": mk, "persona": persona, "rate": rate})
    figures = plots_dir / "figures"  # one DVC out: which PNGs exist depends on the run
    for name, rows in tables.items():
        write_csv((figures if name in ("capabilities", "top_traits") else plots_dir) / f"{name}.csv", rows)

    plt = _figure()
    # Robustness: in-character rate by method, no suffix vs suffixed mean vs prefill, per persona.
    binary = metrics["robustness"]["binary"]
    fig, axes = plt.subplots(1, len(binary), figsize=(5 * len(binary), 3.5), squeeze=False)
    for ax, (persona, methods) in zip(axes[0], binary.items()):
        names = list(methods)
        for j, key in enumerate(("macro_f1/none", "macro_f1/suffixed_mean", "macro_f1/prefill")):
            ax.bar([i + 0.27 * j for i in range(len(names))], [methods[n][key] or 0 for n in names], 0.27,
                   label=key.split("/")[1])
        ax.set_xticks([i + 0.27 for i in range(len(names))], names, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_title(f"{persona}: persona vs base, macro-F1")
    axes[0][0].legend(fontsize=8)
    _save(fig, figures / "robustness.png")
    # Trait ratings: histogram per method, the spread a persona should widen.
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for mk, groups in ratings.items():
        if "preference" in groups:
            ax.hist(list(groups["preference"]["bradley_terry"].values()), bins=30, histtype="step", label=mk)
    ax.set_xlabel("Bradley-Terry rating (Elo scale)")
    ax.set_title("Revealed trait preferences")
    ax.legend(fontsize=7)
    _save(fig, figures / "trait_ratings.png")
    # Risers and fallers of each final model against the base model.
    finals = {mk: m["movers"] for mk, m in metrics["revealed"].items() if mk.endswith("/final") and "movers" in m}
    if finals:
        fig, axes = plt.subplots(1, len(finals), figsize=(5 * len(finals), 3.5), squeeze=False)
        for ax, (mk, mv) in zip(axes[0], finals.items()):
            items = mv["risers"] + mv["fallers"][::-1]
            ax.barh([t for t, _ in items][::-1], [d for _, d in items][::-1],
                    color=["tab:green" if d > 0 else "tab:red" for _, d in items][::-1])
            ax.set_title(f"{mk}: rating change vs base")
        _save(fig, figures / "trait_movers.png")
    # Coherence win rates of the final model.
    if tables["coherence"]:
        fig, ax = plt.subplots(figsize=(7, 3))
        labels = [f"{r['persona']}: {r['comparison']}" for r in tables["coherence"]]
        ax.barh(labels, [r["win_rate"] if r["decided"] else 0 for r in tables["coherence"]],
                xerr=[r["sem"] if r["decided"] else 0 for r in tables["coherence"]])
        ax.axvline(0.5, color="gray", linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_title("Coherence: final model's win rate (consistent verdicts only)")
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
    for name in ("robustness", "trait_ratings", "trait_movers", "coherence"):
        parts.append(_img(plots_dir / "figures" / f"{name}.png"))
    parts += ["<h2>Revealed trait preferences (Bradley-Terry ranking)</h2>", _table_html(tables["top_traits"]),
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
    md += [f"![{n}](../plots/eval/figures/{n}.png)\n" for n in ("robustness", "trait_ratings", "trait_movers",
                                                                "coherence") if (plots_dir / "figures" / f"{n}.png").exists()]
    md += ["## Revealed trait preferences (Bradley-Terry ranking)\n", _table_md(tables["top_traits"]),
           "## Coherence\n", _table_md(tables["coherence"]), "## Capabilities\n", _table_md(tables["capabilities"]),
           "## Side by side\n"]
    for row in side_by_side:
        md.append(f"### {row['prompt']}\n")
        md += [f"- **{m}**: {row['answers'].get(m, '').replace(chr(10), ' ')}" for m in methods]
        md.append("")
    path_md.write_text("\n".join(md) + "\n")

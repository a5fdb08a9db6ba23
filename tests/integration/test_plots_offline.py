"""`dvc plots show` and `dvc plots diff` render with no network, through scripts/build_plots_template.sh.

A tiny DVC repo with one CSV plot and two commits; the pages are screenshotted by headless Chromium with
every host name unresolvable, and the screenshot must hold coloured (drawn) pixels. The same page with
DVC's default (CDN) template must not: that shows the check can tell a blank page from a drawn one.
Needs npm (the registry) and Debian's chromium; skipped without them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def sh(cmd, cwd, check=True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def screenshot(page: Path, png: Path, profile: Path) -> None:
    # The flags the machine notes give for headless Chromium here; MAP * ~NOTFOUND makes every host
    # unresolvable, so a page that needs the network renders exactly as it would offline.
    sh([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--window-size=900,700",
        "--virtual-time-budget=10000", f"--screenshot={png}", page.as_uri()], page.parent, timeout=120)


def coloured_pixels(png: Path) -> int:
    """Pixels whose channels differ by more than 60: plot marks, not white, grey or black text."""
    import numpy as np
    from PIL import Image

    rgb_HW3 = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    return int((rgb_HW3.max(axis=-1) - rgb_HW3.min(axis=-1) > 60).sum())


@pytest.mark.skipif(not (shutil.which("npm") and CHROMIUM), reason="needs npm and Debian's chromium")
def test_plots_show_and_diff_render_offline(tmp_path):
    template = tmp_path / "offline.html"
    sh(["bash", str(ROOT / "scripts/build_plots_template.sh"), str(template)], ROOT, timeout=300)
    html = template.read_text()
    assert "{plot_divs}" in html and "vegaEmbed" in html and "<script src=" not in html

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("plots:\n  - loss.csv: {x: step, y: loss}\n")
    (repo / "loss.csv").write_text("step,loss\n" + "".join(f"{i},{2.0 / (i + 1):.3f}\n" for i in range(20)))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1"]):
        sh(cmd, repo)
    (repo / "loss.csv").write_text("step,loss\n" + "".join(f"{i},{1.5 / (i + 1):.3f}\n" for i in range(20)))

    sh(["dvc", "plots", "show", "--html-template", str(template), "-o", "show"], repo)
    sh(["dvc", "plots", "diff", "HEAD", "--html-template", str(template), "-o", "diff"], repo)
    sh(["dvc", "plots", "show", "-o", "cdn"], repo)  # DVC's default page, vega from a CDN
    for name in ("show", "diff", "cdn"):
        page = (repo / name / "index.html").read_text()
        assert "loss.csv" in page
        assert ("cdn.jsdelivr.net" in page) == (name == "cdn")
    assert "HEAD" in (repo / "diff/index.html").read_text() and "workspace" in (repo / "diff/index.html").read_text()

    drawn = {}
    for name in ("show", "diff", "cdn"):
        png = tmp_path / f"{name}.png"
        screenshot(repo / name / "index.html", png, tmp_path / f"profile-{name}")
        drawn[name] = coloured_pixels(png)
    assert drawn["cdn"] < 50, drawn  # blank offline: the reason for the offline template
    assert drawn["show"] > 500 and drawn["diff"] > 500, drawn

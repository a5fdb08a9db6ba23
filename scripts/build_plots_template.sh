#!/usr/bin/env bash
# Build an offline page template for `dvc plots show` and `dvc plots diff`, and point DVC at it.
#
# DVC 3.67's HTML loads vega, vega-lite and vega-embed from a CDN, so offline its plots render blank.
# This installs those three packages from the npm registry into .cache/plots/npm (git-ignored, ~15 MB),
# inlines their prebuilt browser bundles (~1.3 MB) into .cache/plots/offline.html, and sets
# `plots.html_template` in .dvc/config.local (per-checkout, git-ignored) so that every later
# `dvc plots show|diff` uses it. Versions match the Vega-Lite v5 specs that DVC's templates emit.
#
#   scripts/build_plots_template.sh            # build, then configure this checkout
#   scripts/build_plots_template.sh OUT.html   # build to OUT.html only
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.cache/plots/offline.html}
NPM_DIR=.cache/plots/npm
mkdir -p "$NPM_DIR" "$(dirname "$OUT")"
[ -f "$NPM_DIR/package.json" ] || echo '{"private": true}' > "$NPM_DIR/package.json"
npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error \
  vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 >/dev/null
python3 - "$NPM_DIR/node_modules" "$OUT" <<'EOF'
import sys
from pathlib import Path

modules, out = Path(sys.argv[1]), Path(sys.argv[2])
bundles = [modules / "vega/build/vega.min.js", modules / "vega-lite/build/vega-lite.min.js",
           modules / "vega-embed/build/vega-embed.min.js"]
# "</script" inside a bundle would end the inline <script> element early; "<\/" is the same string in JS.
scripts = "\n".join(f"<script>/* {b.relative_to(modules).parts[0]} */\n"
                    + b.read_text(encoding="utf8").replace("</script", "<\\/script") + "\n</script>"
                    for b in bundles)
# dvc_render fills {refresh_tag}, {scripts} and {plot_divs} by plain string replacement. {scripts} is left
# out on purpose: DVC fills it with the CDN <script> tags, which offline only fail.
page = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC plots (offline)</title>
{scripts}
<style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""
assert "{plot_divs}" not in scripts and "{refresh_tag}" not in scripts
out.write_text(page, encoding="utf8")
print(f"wrote {out} ({len(page) // 1024} KiB)")
EOF
if [ $# -eq 0 ]; then
  # relative paths in .dvc/config* are resolved from the .dvc folder
  dvc config --local plots.html_template ../.cache/plots/offline.html
  echo "dvc plots show|diff now use $OUT (plots.html_template in .dvc/config.local)"
fi

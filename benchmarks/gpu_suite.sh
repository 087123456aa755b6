#!/usr/bin/env bash
# The GPU suite: kernel tests in bf16, the kernels against transformers' experts implementations at
# real MoE shapes, a short launch-configuration tune, and profiling overhead on CUDA, in one run of
# about 6 minutes (8 at most) on a machine with no network.
#
#   bash benchmarks/gpu_suite.sh --prepare   here, with the package registries: fetch into .whl/
#                                            (git-ignored) the wheels a GPU image may lack
#   bash benchmarks/gpu_suite.sh             on the GPU machine, from the repository root, .whl/ beside
#   bash benchmarks/gpu_suite.sh --dry-run   on a CPU: the same steps in Triton's interpreter, tiny shapes
#                                            (with $PYTHON, default .venv/bin/python; about two minutes)
#
# Everything lands in $OUT (default benchmarks/out/): suite.log, results.json (the summary, goals
# met or not), moe_kernel.json, moe_kernel_tuned.json, tune.json, profile_overhead.json and
# <GPU name>.json, the tuned launch configurations to commit as kernels/configs/<GPU name>.json.
# The project is installed from this working tree into a temporary directory (the image's torch and
# Triton are used as they are); transformers comes from .whl/ when the image's is outside setup.py's
# range (benchmarks/gpu_suite_wheels.py decides). Exits 1 when a correctness check fails (a test, or the kernel against fp32 eager in the
# benchmark) or a step breaks; a speed goal missed is reported in results.json, not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

# The newest transformers setup.py allows, and regex, which it checks when imported (the image's
# version is unknown); gpu_suite_wheels.py installs each only where the image's does not do.
CARRIED=(transformers==5.24.0 regex)
mode=gpu
case "${1:-}" in
  "") ;;
  --dry-run) mode=dry ;;
  --prepare) mode=prepare ;;
  *) echo "usage: bash benchmarks/gpu_suite.sh [--prepare | --dry-run]" >&2; exit 2 ;;
esac

if [ "$mode" = prepare ]; then
  exclude="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  # The GPU image's python is CPython 3.12 on x86-64.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${CARRIED[@]}" || exit 1
  ls -l .whl
  echo "now run on the GPU machine: bash benchmarks/gpu_suite.sh   (carry .whl)"
  exit 0
fi

OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$mode" = dry ]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
  PY="${PYTHON:-$([ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3)}"
  DEADLINE=900
else
  unset TRITON_INTERPRET
  PY=python3
  DEADLINE=480  # seconds for the whole suite: every step's limit is cut to what is left of it
fi
SITE="$(mktemp -d)"  # the installed project, and the notes the summary reads (at most 8 files come back from $OUT)
trap 'rm -rf "$SITE"' EXIT

failures=()
# step NAME LIMIT_S COMMAND...: run with a time limit, log its status and time, never stop the suite.
step() {
  local name="$1" limit="$2"
  shift 2
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit="$left"
  if [ "$limit" -le 5 ]; then
    echo "=== $name: skipped, the suite's $DEADLINE s are spent"
    printf '%s\tskipped\t0\n' "$name" >>"$SITE/steps.tsv"
    failures+=("$name (no time left)")
    return
  fi
  echo "=== $name (at most $limit s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >>"$SITE/steps.tsv"
  echo "=== $name: exit $rc after $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || failures+=("$name (exit $rc)")
}

suite() {
echo "=== machine: $(date -u +%FT%TZ), mode $mode"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>/dev/null \
  | tee "$SITE/nvidia_smi.csv" || echo "no nvidia-smi"
# transformers (and what it needs) from .whl/ when the image's is outside setup.py's range.
wheels="$("$PY" benchmarks/gpu_suite_wheels.py .whl)" || return 1
[ -n "$wheels" ] && echo "bringing" $wheels
# shellcheck disable=SC2086  # one wheel path per word
"$PY" -m pip install -q --no-deps --no-index --no-build-isolation --no-compile --target "$SITE" . $wheels \
  || { echo "FAILED: could not install the project from this tree"; return 1; }
export PYTHONPATH="$SITE"
# -P for `-c` and `-m`: the checkout's own `compress/` (no compress.kernels) must not shadow the installed
# package; a script run by path puts only its own folder first.
"$PY" -P -c "import compress.kernels.fused_moe as f, transformers; print('installed', f.__file__, 'transformers', transformers.__version__)" \
  || { echo "FAILED: the installed project does not import"; return 1; }
CONFIGS="$("$PY" -P -c "from compress.kernels import fused_moe; print(fused_moe.CONFIG_DIR)")"

step tests 150 "$PY" -P -m pytest -q -rs -p no:cacheprovider --junitxml "$SITE/pytest.xml" tests/test_kernels.py \
  "tests/test_routing_stats.py::test_collector_on_a_gpu_keeps_the_logits_and_counts_the_routers_choices"
if [ "$mode" = dry ]; then
  step moe_kernel 300 "$PY" benchmarks/moe_kernel.py --tiny --repeats 1 --tokens 1,8 --json "$OUT/moe_kernel.json"
  step profile_overhead 120 "$PY" benchmarks/profile_overhead.py --device cpu --shape gpt-oss-tiny --layers 2 \
    --batch-size 2 --seq-len 64 --repeats 3 --dtype float32 --json "$OUT/profile_overhead.json"
  step tune 200 "$PY" benchmarks/tune_moe_kernel.py --tiny --repeats 1 --json "$OUT/tune.json"
  step moe_kernel_tuned 120 "$PY" benchmarks/moe_kernel.py --tiny --repeats 1 --tokens 1 --shape gpt-oss-tiny \
    --json "$OUT/moe_kernel_tuned.json"
else
  # The most wanted figures first: a step cut short by the deadline loses the least.
  step moe_kernel 200 "$PY" benchmarks/moe_kernel.py --repeats 30 --json "$OUT/moe_kernel.json"
  step profile_overhead 120 "$PY" benchmarks/profile_overhead.py --device cuda --shape gpt-oss-20b --layers 4 \
    --batch-size 8 --seq-len 512 --repeats 10 --dtype bfloat16 --json "$OUT/profile_overhead.json"
  step tune 130 "$PY" benchmarks/tune_moe_kernel.py --budget-s 100 --json "$OUT/tune.json"
  step moe_kernel_tuned 90 "$PY" benchmarks/moe_kernel.py --repeats 30 --shape gpt-oss-20b --shape gpt-oss-20b-E16 \
    --json "$OUT/moe_kernel_tuned.json"
fi
cp "$CONFIGS"/*.json "$OUT/" 2>/dev/null
rm -f "$OUT/default.json"  # shipped already; only a tuned table is new

"$PY" benchmarks/gpu_suite_summary.py "$OUT" --mode "$mode" --notes "$SITE" --failed "${failures[@]}"
status=$?
echo "=== suite done in $SECONDS s"
return "$status"
}

suite 2>&1 | tee "$OUT/suite.log"
exit "${PIPESTATUS[0]}"

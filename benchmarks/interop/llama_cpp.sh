#!/usr/bin/env bash
# Does llama.cpp's converter (convert_hf_to_gguf.py) accept what moe-compress writes?
# A benchmark, NOT run by CI: only the Python converter is checked (plus a read-back of the GGUF's
# expert tensors with the gguf package); running the GGUF would need llama.cpp built, ~50 minutes
# on 2 cores, so the log-probabilities are not compared here.
#
#   bash benchmarks/interop/llama_cpp.sh [MANIFEST.json [RESULTS.json]]
#
# MANIFEST defaults to $INTEROP_DIR/out/manifest.json (written by build.py, see run.sh), RESULTS to
# llama_cpp.json beside it. The converter is the one llama-cpp-python 0.3.36 vendors: only
# convert_hf_to_gguf.py, its conversion/ package and gguf-py are taken from the sdist (set
# LLAMA_CPP_SDIST to a downloaded llama_cpp_python-0.3.36.tar.gz, else it is fetched with pip
# download), into a venv of its own, $INTEROP_DIR/llama-cpp (kept between runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
WORK="${INTEROP_DIR:-$ROOT/.interop}"
VERSION=0.3.36
VENV="$WORK/llama-cpp"
SRC="$VENV/llama.cpp"                 # the extracted converter
MANIFEST="${1:-$WORK/out/manifest.json}"
RESULTS="${2:-$(dirname "$MANIFEST")/llama_cpp.json}"
mkdir -p "$WORK"

if [ ! -f "$SRC/convert_hf_to_gguf.py" ]; then
  SDIST="${LLAMA_CPP_SDIST:-$WORK/llama_cpp_python-$VERSION.tar.gz}"
  if [ ! -f "$SDIST" ]; then
    pip download -q --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
    SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
  fi
  P="llama_cpp_python-$VERSION/vendor/llama.cpp"
  mkdir -p "$SRC"
  tar xzf "$SDIST" -C "$SRC" --strip-components=3 \
    "$P/convert_hf_to_gguf.py" "$P/conversion" "$P/gguf-py" "$P/requirements"
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # requirements/requirements-convert_hf_to_gguf.txt, except torch (it pins 2.11.0 from PyTorch's
  # index; 2.13.0 is the CPU wheel on this disk) and transformers: its 4.57.6 cannot load the
  # tokenizer_config.json transformers 5 writes ("Tokenizer class TokenizersBackend does not
  # exist"), so the transformers the project runs on. gguf: the vendored gguf-py (0.19.0), which the
  # converter puts first on sys.path anyway.
  "$VENV/bin/pip" install -q torch==2.13.0 "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \
    "transformers==5.24.0" "protobuf>=4.21.0,<5.0.0" "$SRC/gguf-py"
fi

"$VENV/bin/python" benchmarks/interop/engine_llama_cpp.py "$MANIFEST" "$RESULTS"

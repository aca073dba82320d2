#!/usr/bin/env bash
# Sets up .venv with everything safety-audit needs, from the package registries only.
# Idempotent: a second run installs nothing new. Safe on a fresh machine of this kind.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
LLAMA_VERSION=0.3.36
# GGML_NATIVE=OFF: the native build segfaults on this CPU (GCC 12 miscompiles ggml's AMX code).
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
WHEELHOUSE=${SAFETY_AUDIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/safety-audit/wheels/llama-cpp-python-${LLAMA_VERSION}-nonative}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# pip on machines of this kind warns about every missing local index folder of its config: keep real messages only
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }; return "${PIPESTATUS[0]}"; }
quiet $PIP install -q --upgrade pip >/dev/null

# torch first: the CPU wheel on disk. A bare `torch` requirement would pull a multi-GB CUDA build.
$VENV/bin/python -c "import torch" 2>/dev/null || quiet $PIP install -q "torch==2.13.0"

# llama-cpp-python ships only an sdist; pip's wheel cache ignores CMAKE_ARGS, so keep our own
# wheelhouse keyed by version + flags and never let pip reuse a natively built (crashing) wheel.
if ! $VENV/bin/python -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_VERSION')" 2>/dev/null; then
  if ! ls "$WHEELHOUSE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION (portable AVX2, ~6 min on 2 cores) ..."
    mkdir -p "$WHEELHOUSE.tmp"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      quiet $PIP wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELHOUSE.tmp"
    rm -rf "$WHEELHOUSE" && mv "$WHEELHOUSE.tmp" "$WHEELHOUSE"
  fi
  quiet $PIP install -q --no-cache-dir "$WHEELHOUSE"/llama_cpp_python-*.whl
fi

# llama.cpp's HF->GGUF converter, from the same sdist the wheel above was built from (auditor/io/hf_to_gguf.py)
CONVERT="$VENV/share/llama.cpp-convert"
if [ "$(cat "$CONVERT/VERSION" 2>/dev/null)" != "$LLAMA_VERSION" ]; then
  SDIST=$(mktemp -d)
  quiet $PIP download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$SDIST" >/dev/null
  SRC="llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
  tar xzf "$SDIST"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$SDIST" \
    "$SRC/convert_hf_to_gguf.py" "$SRC/conversion" "$SRC/gguf-py" "$SRC/LICENSE"
  rm -rf "$CONVERT.tmp" && mkdir -p "$CONVERT.tmp"
  mv "$SDIST/$SRC"/{convert_hf_to_gguf.py,conversion,gguf-py,LICENSE} "$CONVERT.tmp"/
  echo "$LLAMA_VERSION" > "$CONVERT.tmp/VERSION"
  rm -rf "$CONVERT" "$SDIST" && mv "$CONVERT.tmp" "$CONVERT"
fi

# this package, editable: only when its packaging changed (a re-run installs nothing and prints nothing)
STAMP="$VENV/.safety-audit-installed"
WANT=$(cat pyproject.toml setup.py | sha256sum | cut -d" " -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! "$VENV/bin/python" -c "import auditor" 2>/dev/null; then
  quiet $PIP install -q -e ".[test]"
  echo "$WANT" > "$STAMP"
fi

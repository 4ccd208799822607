#!/usr/bin/env bash
# Python environment for the demo, the tests and CI: a venv keyed by requirements.lock,
# cached under ~/.cache/kubeft/venv/, so warm runs install nothing but the project itself.
# Prints the venv's path on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${KUBEFT_CACHE:-$HOME/.cache/kubeft}"
PY="${PYTHON:-python3}"
key="$( { cat requirements.lock; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
VENV="$CACHE/venv/$key"

if [[ ! -x "$VENV/bin/python" || ! -f "$VENV/.complete" ]]; then
  echo "[bootstrap] creating $VENV (first run downloads torch and friends: several GB)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE/venv"
  # llama-cpp-python is built from source unless pip's cache has its wheel: that needs a C/C++
  # compiler (scikit-build-core fetches cmake and ninja itself); a bare Debian has none
  if ! command -v g++ >/dev/null && [[ -z "$(find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name 'llama_cpp_python-*.whl' 2>/dev/null | head -1)" ]]; then
    echo "[bootstrap] installing Debian's g++ (to build llama.cpp once)" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++; } >/tmp/kubeft-apt-gxx.log 2>&1; then
      tail -20 /tmp/kubeft-apt-gxx.log >&2
      exit 1
    fi
  fi
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # llama-cpp-python (the GGUF exports' quantizer and the tests' loader) is an sdist: pip builds
  # llama.cpp with cmake once (about 2 min on 2 cores, library only) and keeps the wheel in its cache (~/.cache/pip),
  # so the next venv reuses it. Only the library is built: no tools, examples, server or mtmd.
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    "$VENV/bin/pip" install -q -r requirements.lock >&2
  touch "$VENV/.complete"
fi
# the project itself, editable, pointing at this checkout (cheap; no dependencies)
if ! "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . >"$CACHE/editable-install.log" 2>&1; then
  cat "$CACHE/editable-install.log" >&2
  exit 1
fi
echo "$VENV"

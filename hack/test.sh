#!/usr/bin/env bash
# The test command: sets up everything it needs (Python venv, Go-built binaries, Debian's
# prometheus), checks lint, format and types, then runs the whole test suite against the
# real local stack. Extra arguments go to pytest (e.g. hack/test.sh tests/stack -x).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$(hack/bootstrap.sh)"
hack/build-binaries.sh all >/dev/null
if ! command -v prometheus >/dev/null; then
  echo "[test] installing Debian's prometheus" >&2
  export DEBIAN_FRONTEND=noninteractive
  # quiet unless it fails (the dpkg log of every package says nothing)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >/tmp/kubeft-apt.log 2>&1; then
    tail -20 /tmp/kubeft-apt.log >&2
    exit 1
  fi
fi
export PATH="$VENV/bin:${KUBEFT_CACHE:-$HOME/.cache/kubeft}/bin:$PATH"

echo "[test] ruff check, ruff format --check, mypy" >&2
ruff check .
ruff format --check .
mypy kubeft operator/kubeft_operator trainer_image/kubeft_trainer bench

set +e
pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit $rc

#!/usr/bin/env bash
# The demo: sets up everything it needs on a fresh machine, brings the local stack up
# and runs `kubeft demo` (see README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$(hack/bootstrap.sh)"
hack/build-binaries.sh all >/dev/null
export PATH="$VENV/bin:${KUBEFT_CACHE:-$HOME/.cache/kubeft}/bin:$PATH"
exec kubeft demo "$@"

#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, transformers, peft, accelerate, pyarrow...), at the
# versions of requirements.lock, for its Python 3.12 on x86-64: into .whl/ (git-ignored locally),
# which bench/device_job.sh installs there.    bash bench/wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
names=(bitsandbytes trl datasets liger_kernel multiprocess dill minio argon2-cffi argon2-cffi-bindings cffi
       pycparser pycryptodome pydantic pydantic_core annotated-types typing-inspection)
pins=()
for n in "${names[@]}"; do
  pin=$(grep -i -E "^${n//[-_]/[-_]}==" requirements.lock) || { echo "no pin for $n in requirements.lock" >&2; exit 1; }
  pins+=("$pin")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls .whl

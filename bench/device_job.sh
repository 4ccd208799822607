#!/usr/bin/env bash
# Runs bench jobs on a GPU machine in the background and packs the results into one tarball.
#
#   bash bench/device_job.sh setup            # wheels from .whl/ into /tmp/site, import check, GPU facts
#   bash bench/device_job.sh start NAME CMD   # runs CMD (a bench command) detached; results in /tmp/bench/NAME
#   bash bench/device_job.sh wait NAME SECS   # waits up to SECS for NAME, prints its log tail, packs $OUT/NAME.tgz
set -u
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=warning
case "${1:-}" in
setup)
  if [ ! -f /tmp/site/.done ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && touch /tmp/site/.done || exit 1
  fi
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  python3 - <<'EOF' || exit 1
import importlib, importlib.metadata as md
for m in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets", "liger_kernel",
          "minio", "pynvml", "prometheus_client", "safetensors", "yaml", "pydantic"):
    importlib.import_module(m)
print({p: md.version(p) for p in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl",
                                   "datasets", "liger-kernel", "minio", "nvidia-ml-py")})
import bitsandbytes.functional  # loads the CUDA library
import sys; sys.path[:0] = ["trainer_image", "."]
import kubeft_trainer.train, kubeft.estimate  # noqa
print("imports ok")
EOF
  ;;
start)
  name=$2; shift 2
  mkdir -p /tmp/bench/$name
  rm -f /tmp/bench/$name.done
  setsid nohup bash -c "{ $*; } > /tmp/bench/$name.log 2>&1; echo \$? > /tmp/bench/$name.done" >/dev/null 2>&1 &
  echo "started $name"
  ;;
wait)
  name=$2; secs=$3
  for _ in $(seq "$secs"); do [ -f /tmp/bench/$name.done ] && break; sleep 1; done
  tail -c 6000 /tmp/bench/$name.log
  [ -f /tmp/bench/$name.done ] && echo "DONE rc=$(cat /tmp/bench/$name.done)" || echo "STILL RUNNING"
  cp /tmp/bench/$name.log /tmp/bench/$name/ 2>/dev/null
  [ -n "${OUT:-}" ] && tar czf "$OUT/$name.tgz" -C /tmp/bench "$name"
  ;;
*)
  echo "usage: $0 setup | start NAME CMD | wait NAME SECS" >&2; exit 2
  ;;
esac

"""A stand-in trainer for the operator's stack tests, run by the local pod runner.

It reads job.json like the real trainer and behaves by the job's name prefix:
``fail-`` exits 1, ``oom-`` exits 1 with a CUDA out-of-memory message, ``bad-`` exits 2
(invalid input), ``ok-`` exits 0; anything else runs until SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def main() -> int:
    with open(os.environ["KUBEFT_JOB_CONFIG"]) as f:
        config = json.load(f)
    name = config["job"]["name"]
    log = os.environ.get("KUBEFT_TERMINATION_LOG", "/dev/termination-log")

    def finish(code: int, message: str) -> int:
        with open(log, "w") as f:
            f.write(message)
        return code

    if name.startswith("fail-"):
        return finish(1, "RuntimeError: simulated trainer crash")
    if name.startswith("oom-"):
        return finish(1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    if name.startswith("bad-"):
        return finish(2, "dataset has no usable rows")
    if name.startswith("ok-"):
        return finish(0, "done")
    # like the real trainer: SIGTERM → (final checkpoint) → exit 143, which costs the Job no retry
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())

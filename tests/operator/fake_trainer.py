"""A stand-in trainer for the operator's stack tests, run by the local pod runner.

It reads job.json like the real trainer and behaves by the job's name prefix:
``fail-`` exits 1, ``oom-`` exits 1 with a CUDA out-of-memory message, ``bad-`` exits 2
(invalid input), ``ok-`` exits 0; anything else runs until SIGTERM.

On more than one node it first meets the other pods the way torchrun's rendezvous would: index 0
listens on KUBEFT_RDZV_ENDPOINT (the headless Service's name of its own pod), the others connect
to it and say their index; every pod writes what it saw to its termination message.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time


def rendezvous(endpoint: str, nodes: int, index: int) -> str:
    host, _, port = endpoint.rpartition(":")
    if index == 0:
        with socket.create_server((host, int(port))) as server:
            server.settimeout(60)
            seen = sorted(int(server.accept()[0].recv(16)) for _ in range(nodes - 1))
        return f"index 0 met {seen} at {endpoint}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(str(index).encode())
            return f"index {index} met index 0 at {endpoint}"
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> int:
    with open(os.environ["KUBEFT_JOB_CONFIG"]) as f:
        config = json.load(f)
    name = config["job"]["name"]
    log = os.environ.get("KUBEFT_TERMINATION_LOG", "/dev/termination-log")

    def finish(code: int, message: str) -> int:
        with open(log, "w") as f:
            f.write(message)
        return code

    endpoint = os.environ.get("KUBEFT_RDZV_ENDPOINT")
    if endpoint and int(os.environ.get("KUBEFT_NNODES", "1")) > 1:
        met = rendezvous(endpoint, int(os.environ["KUBEFT_NNODES"]), int(os.environ["JOB_COMPLETION_INDEX"]))
        if name.startswith("ok-"):
            return finish(0, met)
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

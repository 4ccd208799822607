"""A stand-in trainer for the operator's stack tests, run by the local pod runner.

It reads job.json like the real trainer and behaves by the job's name prefix:
``fail-`` exits 1, ``oom-`` exits 1 with a CUDA out-of-memory message, ``bad-`` exits 2
(invalid input), ``ok-`` exits 0; ``writes-`` writes where the trainer and its libraries write and
where nothing may, then exits 0 if only the first worked (its message says what it found);
anything else runs until SIGTERM.

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


# where the trainer, torch, triton and the hub write (each set by the operator to a pod volume)
WRITABLE_ENV = ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                "KUBEFT_WORKDIR")  # fmt: skip


def check_writes() -> tuple[bool, str]:
    """Writes a file under every writable place, and tries the working directory, this script's own
    directory (the image) and the job config's (a read-only ConfigMap mount)."""
    wrote, refused, wrong = [], [], []
    for name in WRITABLE_ENV:
        try:
            d = os.path.join(os.environ[name], "probe")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "x"), "w") as f:
                f.write("x")
            wrote.append(name)
        except (KeyError, OSError) as exc:
            wrong.append(f"{name}: {exc}")
    for where in (os.getcwd(), os.path.dirname(os.path.abspath(__file__)),
                  os.path.dirname(os.environ["KUBEFT_JOB_CONFIG"])):  # fmt: skip
        try:
            with open(os.path.join(where, "probe-x"), "w") as f:
                f.write("x")
            wrong.append(f"wrote to {where}")
        except OSError as exc:
            refused.append(f"{where}: {exc.strerror}")
    return not wrong, f"wrote to {', '.join(wrote)}; refused: {'; '.join(refused)}; wrong: {'; '.join(wrong)}"


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
    if name.startswith("writes-"):
        ok, message = check_writes()
        return finish(0 if ok else 1, message)
    # like the real trainer: SIGTERM → (final checkpoint) → exit 143, which costs the Job no retry
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())

"""Runs a command with the root filesystem read-only except for the given paths (the local pod
runner's ``readOnlyRootFilesystem``; test and demo harness only).

Run inside a private mount namespace (``unshare --mount --propagation private``, plus
``--map-root-user`` when not root): each writable path is bind-mounted onto itself, every other
mount except /proc, /sys and /dev is remounted read-only, then the command replaces this process.
A write anywhere else fails with EROFS, as it would in a container whose root filesystem is
read-only. The processes outside the namespace see no change.

Usage: python rootfs.py --writable PATH [--writable PATH ...] -- COMMAND [ARG ...]

This file imports nothing of kubeft: the runner starts it by path.
"""

from __future__ import annotations

import os
import subprocess
import sys

KEEP = ("/proc", "/sys", "/dev")  # kernel file systems and devices stay as they are (/dev/shm too)


def _unescape(field: str) -> str:
    """A path from /proc/self/mountinfo (spaces and the like are octal escapes)."""
    return field.encode().decode("unicode_escape")


def mount_points() -> list[str]:
    """Every mount point of this namespace, in mount order, once each."""
    seen: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point not in seen:
                seen.append(point)
    return seen


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


def make_read_only(writable: list[str]) -> None:
    """Binds each writable path onto itself, then remounts every other mount read-only."""
    paths = [os.path.realpath(p) for p in writable]
    for path in paths:
        done = _mount("--bind", path, path)
        if done.returncode:
            raise SystemExit(f"rootfs: cannot bind {path}: {done.stderr.strip()}")
    for point in mount_points():
        if point in paths or any(point == k or point.startswith(k + "/") for k in KEEP):
            continue
        done = _mount("-o", "remount,bind,ro", point)
        if done.returncode and point == "/":
            raise SystemExit(f"rootfs: cannot remount / read-only: {done.stderr.strip()}")


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit(__doc__)
    sep = argv.index("--")
    opts, command = argv[:sep], argv[sep + 1 :]
    if not command or len(opts) % 2 or any(o != "--writable" for o in opts[::2]):
        raise SystemExit(__doc__)
    make_read_only(opts[1::2])
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

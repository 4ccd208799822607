"""Processes by parent, read from /proc (Linux): torchrun's workers run in sessions of their own,
so killing a launcher's process group does not reach them."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def children() -> dict[int, list[int]]:
    """Parent pid → the pids of its children, for every process now."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])  # the command may hold spaces and ')'
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def kill_tree(pid: int) -> None:
    """SIGKILLs a process and every descendant."""
    tree = children()
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(tree.get(p, []))
    for p in seen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)

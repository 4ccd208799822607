"""Training on several GPUs and nodes: torchrun, who does what, and the gang's shared waits.

The operator runs a job of ``resources.nodes`` pods (an Indexed Job) with ``resources.gpus`` GPUs
each and sets, in every pod::

    KUBEFT_NNODES, KUBEFT_NPROC_PER_NODE    the world: nodes × processes per node
    KUBEFT_RDZV_ENDPOINT                    host:port of the pod with index 0 (c10d rendezvous)
    KUBEFT_RDZV_ID                          the FineTuneJob's UID
    JOB_COMPLETION_INDEX                    this pod's index (the Indexed Job controller's): node rank

When the world has more than one process and this process is not a torchrun worker yet (no
``LOCAL_RANK``), ``kubeft-trainer`` starts the real torchrun (``torch.distributed.run``) in its own
process, which starts one worker per GPU running ``python -m kubeft_trainer`` with the same
arguments. :func:`run_torchrun` keeps the trainer's exit codes (2 invalid input, 143 terminated
after a final checkpoint) through torchrun, which itself only knows success or failure, and
forwards SIGTERM to the workers so that they checkpoint: torchrun's own handler would give them 30
seconds and then kill them, whatever the checkpoint's size.

In the workers: rank 0 alone patches the status, uploads checkpoints and exports; every rank serves
metrics (label ``rank``); on each node the local rank 0 fetches the model and dataset and downloads
the checkpoint to resume from while the node's other ranks wait for it (:func:`node_first`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from kubeft import contract, procs
from kubeft_trainer.errors import EXIT_FAILED, InvalidInputError, TrainerError

log = logging.getLogger(__name__)

ENV_NNODES = contract.ENV_NNODES
ENV_NPROC_PER_NODE = contract.ENV_NPROC_PER_NODE
ENV_RDZV_ENDPOINT = contract.ENV_RDZV_ENDPOINT
ENV_RDZV_ID = contract.ENV_RDZV_ID
ENV_NODE_RANK = "JOB_COMPLETION_INDEX"  # the Indexed Job's pod index
ENV_METRICS_PORTS = contract.ENV_METRICS_PORTS
# Seconds a collective (all-reduce, barrier...) may wait for a rank before the gang fails: a dead
# rank ends the run instead of hanging it. The Job then restarts the gang from the last checkpoint.
ENV_COLLECTIVE_TIMEOUT = "KUBEFT_COLLECTIVE_TIMEOUT_SECONDS"
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = 600
# What a node's other ranks wait, at most, for its local rank 0 to fetch the model, the dataset or
# a checkpoint (downloads of many GB take longer than a collective may)
SETUP_WAIT_SECONDS = 3 * 3600
# What ranks > 0 wait, after a SIGTERM checkpoint, for rank 0 to finish uploading it: torchrun
# stops the other workers as soon as one exits
UPLOAD_WAIT_SECONDS = 1800


@dataclass(frozen=True)
class Launch:
    """How this pod takes part in the world: torchrun's arguments."""

    nnodes: int
    nproc_per_node: int
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_id: str = ""

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def torchrun_args(self, argv: Sequence[str]) -> list[str]:
        """torchrun's command line for ``python -m kubeft_trainer ARGV`` on every GPU of this node."""
        args = [
            "--nnodes",
            str(self.nnodes),
            "--nproc-per-node",
            str(self.nproc_per_node),
            "--node-rank",
            str(self.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            self.rdzv_endpoint or "127.0.0.1:29400",
            "--rdzv-id",
            self.rdzv_id or "kubeft",
            "--max-restarts",
            "0",
            # SIGTERM is ours to forward (run_torchrun); torchrun still handles the others
            "--signals-to-handle",
            "SIGINT,SIGHUP,SIGQUIT",
        ]
        return [*args, "--module", "kubeft_trainer", *argv]


def _int_env(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidInputError(f"{name}={raw!r}: expected an integer of at least {minimum}")
    return value


def launch_from_env(env: Mapping[str, str]) -> Launch | None:
    """The torchrun launch this pod must make; None when it trains alone or already is a worker."""
    if "LOCAL_RANK" in env:  # a torchrun worker already
        return None
    nnodes = _int_env(env, ENV_NNODES, 1)
    nproc = _int_env(env, ENV_NPROC_PER_NODE, 1)
    if nnodes * nproc <= 1:
        return None
    node_rank = _int_env(env, ENV_NODE_RANK, 0, minimum=0)
    if node_rank >= nnodes:
        raise InvalidInputError(f"{ENV_NODE_RANK}={node_rank} but {ENV_NNODES}={nnodes}")
    endpoint = env.get(ENV_RDZV_ENDPOINT, "")
    if nnodes > 1 and not endpoint:
        raise InvalidInputError(
            f"{ENV_RDZV_ENDPOINT} must name the first pod (host:port) when {ENV_NNODES} > 1"
        )
    return Launch(nnodes, nproc, node_rank, endpoint, env.get(ENV_RDZV_ID, ""))


def exit_code(failures: Mapping[int, Any], terminated: bool) -> int:
    """The pod's exit code from the workers that failed first (``{local_rank: ProcessFailure}``).

    A worker that refused its input (2) makes the pod refuse it: retrying cannot help. Workers that
    stopped on SIGTERM after a final checkpoint (143), or a SIGTERM this launcher received, make it
    143: the pod failure policy does not count it. Anything else is a failure (1).
    """
    codes = {int(getattr(f, "exitcode", EXIT_FAILED)) for f in failures.values()}
    if contract.EXIT_INVALID_INPUT in codes:
        return contract.EXIT_INVALID_INPUT
    if contract.EXIT_TERMINATED in codes or (-signal.SIGTERM in codes and terminated):
        return contract.EXIT_TERMINATED
    return EXIT_FAILED


def worker_pids() -> list[int]:
    """The pids of this process's children (torchrun's workers, started in sessions of their own)."""
    return procs.children().get(os.getpid(), [])


def run_torchrun(launch: Launch, argv: Sequence[str]) -> int:
    """Runs torchrun (``torch.distributed.run``) for ``kubeft_trainer ARGV``; returns the pod's exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    terminated = threading.Event()

    def forward(signum: int, frame: Any) -> None:
        terminated.set()
        pids = worker_pids()
        log.warning("received signal %d: forwarding it to the workers %s", signum, pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    args = launch.torchrun_args(argv)
    log.info(
        "launching %d process(es) on node %d of %d: torchrun %s",
        launch.nproc_per_node,
        launch.node_rank,
        launch.nnodes,
        " ".join(args),
    )
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as exc:
        code = exit_code(exc.failures, terminated.is_set())
        log.error("training failed on node %d: %s → exit %d", launch.node_rank, _failures(exc.failures), code)
        return code
    except Exception as exc:  # rendezvous timeouts, a node that never came, ...
        log.error("torchrun failed on node %d: %s: %s", launch.node_rank, type(exc).__name__, exc)
        return contract.EXIT_TERMINATED if terminated.is_set() else EXIT_FAILED
    return contract.EXIT_TERMINATED if terminated.is_set() else contract.EXIT_OK


def _failures(failures: Mapping[int, Any]) -> str:
    return ", ".join(
        f"local rank {r} (rank {getattr(f, 'rank', '?')}) exit {getattr(f, 'exitcode', '?')}"
        for r, f in sorted(failures.items())
    )


# --- inside a worker ----------------------------------------------------------


@dataclass(frozen=True)
class Rank:
    """Where this process sits in the world (torchrun's environment; one process: all zeros)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one status writer, checkpoint uploader and exporter."""
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        """Local rank 0: fetches for its node."""
        return self.local_rank == 0

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def current(env: Mapping[str, str] | None = None) -> Rank:
    """This process's rank from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, ...)."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env:
        return Rank()
    return Rank(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=int(env.get("WORLD_SIZE", "1")),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        node_rank=int(env.get("GROUP_RANK", "0")),
    )


def metrics_port(base: int | None, rank: Rank, env: Mapping[str, str] | None = None) -> int | None:
    """This rank's /metrics port: its local rank's entry of $KUBEFT_METRICS_PORTS, else base + local rank.

    Port 0 (any free port) stays 0; None (no metrics) stays None.
    """
    env = os.environ if env is None else env
    if base is None:
        return None
    listed = [p.strip() for p in env.get(ENV_METRICS_PORTS, "").split(",") if p.strip()]
    if listed:
        if rank.local_rank >= len(listed):
            raise InvalidInputError(
                f"{ENV_METRICS_PORTS}={env[ENV_METRICS_PORTS]!r}: no port for local rank {rank.local_rank}"
            )
        try:
            return int(listed[rank.local_rank])
        except ValueError:
            raise InvalidInputError(
                f"{ENV_METRICS_PORTS}: {listed[rank.local_rank]!r} is not a port"
            ) from None
    return base + rank.local_rank if base else base


def collective_timeout(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    return _int_env(env, ENV_COLLECTIVE_TIMEOUT, DEFAULT_COLLECTIVE_TIMEOUT_SECONDS)


def backend(cuda: bool) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if cuda else "gloo"


def _store() -> Any:
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()


T = TypeVar("T")


def node_first(
    rank: Rank, key: str, fn: Callable[[], T], encode: Callable[[T], Any], decode: Callable[[Any], T]
) -> T:
    """``fn()`` on the node's local rank 0; the node's other ranks wait for it and get its result.

    The result travels JSON-encoded through the rendezvous store (``encode``/``decode``), as does a
    TrainerError, which the waiting ranks raise too (same exit code). Needs the process group.
    """
    if not rank.distributed:
        return fn()
    store = _store()
    name = f"kubeft/{key}/node-{rank.node_rank}"
    if rank.local_main:
        try:
            result = fn()
        except TrainerError as exc:
            store.set(name, json.dumps({"error": str(exc), "class": type(exc).__name__}))
            raise
        except BaseException as exc:
            store.set(name, json.dumps({"error": f"local rank 0 failed: {type(exc).__name__}: {exc}"}))
            raise
        store.set(name, json.dumps({"value": encode(result)}))
        return result
    store.wait([name], timedelta(seconds=SETUP_WAIT_SECONDS))
    doc = json.loads(store.get(name))
    if "error" in doc:
        raise _error_class(doc.get("class"))(doc["error"])
    return decode(doc["value"])


def _error_class(name: str | None) -> type[TrainerError]:
    from kubeft_trainer import errors

    cls = getattr(errors, name or "", None)
    return cls if isinstance(cls, type) and issubclass(cls, TrainerError) else TrainerError


def main_done(rank: Rank, key: str, timeout: float = UPLOAD_WAIT_SECONDS) -> None:
    """Rank 0 says ``key`` is done; every other rank waits for that (through the store, no collective)."""
    if not rank.distributed:
        return
    store = _store()
    name = f"kubeft/{key}"
    if rank.main:
        store.set(name, "1")
        return
    try:
        store.wait([name], timedelta(seconds=timeout))
    except Exception as exc:  # rank 0 gone: nothing left to wait for
        log.warning("stopped waiting for rank 0 (%s): %s", key, exc)


def publish(rank: Rank, key: str, value: str) -> None:
    """This node's ``value`` for ``key`` (see :func:`collect`)."""
    _store().set(f"kubeft/{key}/node-{rank.node_rank}", value)


def collect(rank: Rank, key: str, timeout: float = UPLOAD_WAIT_SECONDS) -> list[str]:
    """What every other node published for ``key``, waiting for each (rank 0 calls this)."""
    store = _store()
    names = [f"kubeft/{key}/node-{n}" for n in range(1, rank.nnodes)]
    store.wait(names, timedelta(seconds=timeout))
    return [store.get(n).decode() for n in names]


def any_rank(flag: bool, rank: Rank, device: Any) -> bool:
    """True when ``flag`` is set on any rank (an all-reduce): every rank then acts alike."""
    if not rank.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(rank: Rank) -> None:
    if rank.distributed:
        import torch.distributed as dist

        dist.barrier()


# --- FSDP memory ---------------------------------------------------------------

ALLOC_CONF_ENVS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def prefer_expandable_segments(env: Mapping[str, str] | None = None) -> bool:
    """FSDP: lets the caching allocator grow its segments in place (``expandable_segments``).

    FSDP all-gathers and frees whole units and reduce-scatters gradients every layer; with fixed
    segments the cache fragments and holds several GiB more than the tensors need (2×H200, Llama
    8B full: 6.4 GiB reserved over allocated, 1.3 GiB with expandable segments). Settings the pod
    gives (``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF``) win. Applies to the segments
    allocated from now on: call it before the model is loaded. True when set here.
    """
    env = os.environ if env is None else env
    if any(env.get(name) for name in ALLOC_CONF_ENVS):
        return False
    try:
        import torch

        torch.cuda.memory._set_allocator_settings(EXPANDABLE_SEGMENTS)
    except (AttributeError, RuntimeError) as exc:  # an older torch, or no CUDA allocator
        log.warning("cannot enable expandable allocator segments: %s", exc)
        return False
    log.info("FSDP: the CUDA caching allocator uses %s", EXPANDABLE_SEGMENTS)
    return True


def sharded_optimizer_kwargs(
    optimizer_cls: Any, kwargs: dict[str, Any], strategy: str, method: str
) -> dict[str, Any]:
    """The optimizer's arguments under FSDP full fine-tuning: torch's AdamW steps one shard at a time.

    Its default multi-tensor (``foreach``) step computes ``sqrt(v)`` of every parameter at once: a
    temporary as large as all the parameters (a quarter of the sharded states, 7.5 GiB per GPU for
    an 8B model on 2 GPUs), at the step, the peak of the run. ``foreach=False`` runs the same
    arithmetic parameter by parameter (same results); the fused kernel (``adamw_torch_fused``)
    needs no temporary and stays as chosen. LoRA's trainable parameters are few: unchanged.
    """
    import torch

    if strategy != "fsdp" or method != "full" or not issubclass(optimizer_cls, torch.optim.AdamW):
        return kwargs
    if kwargs.get("fused"):
        return kwargs
    return {**kwargs, "foreach": False}


def describe(rank: Rank) -> str:
    return (
        f"rank {rank.rank} of {rank.world_size} (local rank {rank.local_rank} of {rank.local_world_size} "
        f"on node {rank.node_rank})"
    )

"""kubeft-trainer: run one FineTuneJob's training, in its pod or locally.

In the pod the operator sets $KUBEFT_JOB_CONFIG (the TrainerConfig JSON) and the job's
identity, storage keys and metrics port in the environment::

    kubeft-trainer

Locally, with a FineTuneJob manifest (or just its spec) and overrides::

    kubeft-trainer --config examples/tiny-job.yaml --set hyperparameters.maxSteps=20 \\
        --workdir /tmp/kubeft-run --no-status --metrics-port 0

Exit codes: 0 success; 2 invalid input (bad config or dataset, unreadable model: retrying
cannot help); 143 terminated by SIGTERM after a final checkpoint; 1 any other failure.
On failure a JSON {"reason", "message"} goes to $KUBEFT_TERMINATION_LOG
(default /dev/termination-log), which Kubernetes shows as the container's termination message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kubeft import contract
from kubeft_trainer.errors import EXIT_FAILED, TrainerError

log = logging.getLogger("kubeft_trainer")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's flags (shared by `kubeft-trainer` and `kubeft train`)."""
    parser.add_argument(
        "--config",
        type=Path,
        help=f"a FineTuneJob manifest, its spec, or a TrainerConfig (default: ${contract.ENV_JOB_CONFIG})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set hyperparameters.maxSteps=20 (repeatable)",
    )
    parser.add_argument(
        "--workdir", type=Path, help=f"scratch directory (default: ${contract.ENV_WORKDIR} or /tmp/kubeft)"
    )
    parser.add_argument("--metrics-port", type=int, help="port for /metrics (0: any free port; default 9400)")
    parser.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    parser.add_argument("--no-status", action="store_true", help="do not patch the FineTuneJob status")
    parser.add_argument("--job-name", help="FineTuneJob name (default: from the config or $KUBEFT_JOB_NAME)")
    parser.add_argument(
        "--namespace", help="FineTuneJob namespace (default: from the config or $KUBEFT_JOB_NAMESPACE)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Loads the config, runs the recipe and maps the outcome to an exit code."""
    from kubeft_trainer.config import load_config

    termination_log = Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))
    try:
        cfg = load_config(args.config, args.overrides)
        if args.workdir is not None:
            cfg.runtime.workdir = args.workdir
        if args.metrics_port is not None:
            cfg.runtime.metrics_port = args.metrics_port
        if args.no_metrics:
            cfg.runtime.metrics_port = None
        if args.no_status:
            cfg.runtime.report_status = False
        if args.job_name:
            cfg.job.name = args.job_name
        if args.namespace:
            cfg.job.namespace = args.namespace
        termination_log = cfg.runtime.termination_log
        from kubeft_trainer.train import Recipe

        Recipe(cfg).run()
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc)
        _write_termination(termination_log, exc.reason, str(exc))
        return exc.exit_code
    except Exception as exc:
        from kubeft_trainer.train import failure_message

        log.exception("training failed")
        _write_termination(termination_log, "TrainingFailed", failure_message(exc))
        return EXIT_FAILED
    log.info("done")
    return contract.EXIT_OK


def _write_termination(path: Path, reason: str, message: str) -> None:
    body = json.dumps({"reason": reason, "message": message[:3500]})
    try:
        if "LOCAL_RANK" in os.environ:
            # torchrun workers share the pod's termination log: the first failure is the cause
            # (the others mostly follow from it)
            _write_first(path, body)
        else:
            path.write_text(body)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def _write_first(path: Path, body: str) -> None:
    """Writes ``body`` to ``path`` unless it already holds something (the kubelet creates it empty)."""
    import fcntl

    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        if not f.read().strip():
            f.truncate(0)
            f.write(body)


def setup_logging(verbose: bool = False) -> None:
    # torchrun workers say which rank speaks
    rank = f"[rank {os.environ['RANK']}] " if "LOCAL_RANK" in os.environ and "RANK" in os.environ else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s {rank}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # keep library chatter (download bars, per-module notices) out of the job log
    for noisy in ("urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def one_gpu() -> None:
    """The trainer trains on one GPU: with several visible (a workstation, `kubeft train`), the first.

    Hugging Face's Trainer would otherwise count them all (``n_gpu``) and scale the micro-batch
    on the one GPU the model is on. A CUDA_VISIBLE_DEVICES already set is kept; in a pod the
    device plugin shows exactly the allocated GPU, index 0. Must run before CUDA starts.
    """
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `kubeft-trainer`.

    With a world of several processes ($KUBEFT_NNODES × $KUBEFT_NPROC_PER_NODE, see
    kubeft_trainer.distributed) it starts torchrun, which runs this same command once per GPU.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="kubeft-trainer", description="Fine-tune an LLM for one FineTuneJob."
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    from kubeft_trainer import distributed

    try:
        launch = distributed.launch_from_env(os.environ)
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc)
        _write_termination(_termination_log(), exc.reason, str(exc))
        return exc.exit_code
    if launch is not None:
        code = distributed.run_torchrun(launch, argv)
        if code not in (contract.EXIT_OK, contract.EXIT_TERMINATED):
            # the workers' own message, when one wrote it, says more than this
            body = {
                "reason": "TrainingFailed",
                "message": f"training failed on node {launch.node_rank} (exit {code})",
            }
            try:
                _write_first(_termination_log(), json.dumps(body))
            except OSError as exc:
                log.warning("cannot write the termination message: %s", exc)
        return code
    if "LOCAL_RANK" not in os.environ:
        one_gpu()
    return run_from_args(args)


def _termination_log() -> Path:
    return Path(os.environ.get(contract.ENV_TERMINATION_LOG, contract.TERMINATION_LOG))


if __name__ == "__main__":
    sys.exit(main())

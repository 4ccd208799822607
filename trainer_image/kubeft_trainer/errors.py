"""Errors the trainer raises on purpose, each mapped to an exit code and a termination reason."""

from __future__ import annotations

from kubeft import contract

# 128 + SIGTERM, what a shell reports for a process ended by SIGTERM: the pod was evicted or
# deleted; a final checkpoint was written, so a retry resumes from it (and the trainer Job's pod
# failure policy does not count it as a failure).
EXIT_TERMINATED = contract.EXIT_TERMINATED
EXIT_FAILED = 1


class TrainerError(Exception):
    """A failure with a plain message for the user; `reason` goes to the termination message."""

    reason = "TrainingFailed"
    exit_code = EXIT_FAILED


class InvalidInputError(TrainerError):
    """The job cannot succeed as configured (bad config, unreadable model, no usable rows): do not retry."""

    reason = "InvalidInput"
    exit_code = contract.EXIT_INVALID_INPUT


class StorageError(TrainerError):
    """Object storage could not be reached or refused a request after all retries."""

    reason = "StorageUnavailable"


class WebIdentityRefusedError(InvalidInputError):
    """STS refused the pod's ServiceAccount token for its role (audience, role, trust): do not retry."""

    reason = "WebIdentityRefused"


class Terminated(TrainerError):
    """SIGTERM arrived; the trainer saved what it could and stops."""

    reason = "Terminated"
    exit_code = EXIT_TERMINATED

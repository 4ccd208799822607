"""Entry point of the operator: ``kubeft-operator`` (or ``kopf run -m kubeft_operator.main``).

    KUBEFT_NAMESPACES=team-a,team-b kubeft-operator     # watch some namespaces
    kubeft-operator                                     # watch all namespaces

Importing this module registers the handlers; ``cli()`` runs kopf with the
liveness endpoint at ``http://0.0.0.0:$KUBEFT_LIVENESS_PORT/healthz``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import kopf

from . import handlers  # noqa: F401  (registers the handlers)
from .settings import Settings


def cli(argv: Sequence[str] | None = None) -> None:
    """Runs the operator until it is stopped."""
    parser = argparse.ArgumentParser(prog="kubeft-operator", description="The kubeft FineTuneJob operator.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    kopf.run(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness,
        # every replica watches; a Lease (KUBEFT_LEADER_ELECTION_LEASE) elects the one that acts
        standalone=True,
    )


if __name__ == "__main__":
    cli()

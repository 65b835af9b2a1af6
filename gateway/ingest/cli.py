"""`parkgate ingest -c FILE [--instance N]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.config import ConfigProblems
from gateway.corecli import not_starting
from gateway.errors import ParkgateError


def run(args: argparse.Namespace) -> int:
    """Validate the file, then run the ingest until SIGTERM."""
    try:
        from gateway.ingest.service import run_file  # noqa: PLC0415 - psycopg only here
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("psycopg"):
            raise
        raise ParkgateError("parkgate ingest needs psycopg: pip install 'parkgate[ingest]'"
                            f" ({exc})") from None
    try:
        return run_file(Path(args.config), instance=args.instance, debug=args.debug)
    except ConfigProblems as exc:
        return not_starting(exc, args.config)

"""`parkgate ingest -c FILE [--instance N]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigProblems
from gateway.errors import ParkgateError

EXIT_INVALID = 2


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
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"parkgate: {len(exc.problems)} problem(s) in {args.config}; not starting",
              file=sys.stderr)
        return EXIT_INVALID

"""`parkgate ingest -c FILE [--instance N]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.config import ConfigProblems

EXIT_INVALID = 2


def run(args: argparse.Namespace) -> int:
    """Validate the file, then run the ingest until SIGTERM."""
    from gateway.ingest.service import run_file  # noqa: PLC0415

    try:
        return run_file(Path(args.config), instance=args.instance, debug=args.debug)
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"parkgate: {len(exc.problems)} problem(s) in {args.config}; not starting",
              file=sys.stderr)
        return EXIT_INVALID

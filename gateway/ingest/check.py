"""`parkgate check` for ingest files: detected by their top-level keys, no psycopg needed."""

from __future__ import annotations

from pathlib import Path

from gateway.config import ConfigProblems
from gateway.ingest.settings import is_ingest_document, load_ingest_config

EXIT_INVALID = 2


def check_if_ingest(path: Path) -> int | None:
    """Validate `path` if it is an ingest config and return the exit code; else None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # the agent's loader reports unreadable files
    if not is_ingest_document(text):
        return None
    try:
        loaded = load_ingest_config(path)
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_INVALID
    cfg = loaded.config
    print(f"{path}: OK (ingest: {len(cfg.source.brokers)} broker(s) -> "
          f"{cfg.sink.db_schema}.{cfg.sink.table})")
    return 0

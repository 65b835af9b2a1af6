"""Core subcommands: run, check, schema, demo, buffer stats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import ConfigProblems, json_schema, load_config
from gateway.errors import ParkgateError

EXIT_INVALID = 2


def not_starting(exc: ConfigProblems, config: str) -> int:
    """Print a config's problems and why the agent does not start; the exit code."""
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"parkgate: {len(exc.problems)} problem(s) in {config}; not starting",
          file=sys.stderr)
    return EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    from gateway.agent import run_file  # noqa: PLC0415 - `check` and `schema` stay light

    try:
        return run_file(Path(args.config), debug=args.debug)
    except ConfigProblems as exc:
        return not_starting(exc, args.config)


def _check(args: argparse.Namespace) -> int:
    from gateway.ingest.check import check_if_ingest  # noqa: PLC0415 - light: no psycopg

    if (code := check_if_ingest(Path(args.file))) is not None:
        return code
    try:
        loaded = load_config(Path(args.file))
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_INVALID
    devices = loaded.config.devices
    print(f"{args.file}: OK ({len(devices)} device(s): "
          f"{', '.join(sorted({d.driver for d in devices})) or 'none'})")
    return 0


def _schema(_args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _buffer_stats(args: argparse.Namespace) -> int:
    """Reads the buffer without changing it: safe beside a running agent, and as root."""
    import sqlite3  # noqa: PLC0415
    import time  # noqa: PLC0415

    from gateway.buffer import (  # noqa: PLC0415
        file_bytes,
        read_side_file,
        read_stats,
        resume_seq,
        seq_side_path,
    )

    try:
        loaded = load_config(Path(args.config))
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    section = loaded.config.buffer
    path = section.path
    # the agent starts above the side file's reservation unless it trusts the database:
    # print the seq it will use, not only what the database says
    reserved = read_side_file(seq_side_path(path))
    if not path.exists():
        print(json.dumps({"path": str(path), "exists": False,
                          "next_seq": resume_seq(1, reserved, trust_db=False)}))
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            stored = read_stats(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ParkgateError(f"cannot read the buffer {path}: {exc}") from None
    # the same rule as the agent opening the file (gateway/buffer/store.py)
    next_seq = stored.next_seq(reserved, synchronous=section.synchronous)
    oldest = stored.oldest_ms
    age = None if oldest is None else round(max(0.0, time.time() - oldest / 1000), 3)
    print(json.dumps({"path": str(path), "rows": stored.readings, "chunks": stored.chunks,
                      "bytes": stored.bytes,
                      "file_bytes": file_bytes(path), "oldest_age_seconds": age,
                      "next_seq": next_seq}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415

    return run_demo(seconds=args.seconds, config=Path(args.config) if args.config else None,
                    dialect=args.dialect)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the core subcommands to the `parkgate` parser."""
    p = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT; SIGHUP reloads")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="config file")
    p.set_defaults(handler=_run)

    p = sub.add_parser("check", help="validate a config file (exit 2 if invalid)")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(handler=_check)

    p = sub.add_parser("schema", help="print the JSON Schema of the config file")
    p.set_defaults(handler=_schema)

    p = sub.add_parser("demo", help="run the gateway on emulated local devices and show "
                                    "what arrives upstream")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="demo config (default: the demo.yaml shipped with parkgate)")
    p.add_argument("--dialect", choices=("parkgate", "sparkplug"), default="parkgate",
                   help="what goes on the wire: the native JSON, or Sparkplug B (the view "
                        "decodes the births and DDATA)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("buffer", help="inspect the durable buffer")
    bsub = p.add_subparsers(dest="buffer_command", metavar="COMMAND", required=True)
    s = bsub.add_parser("stats", help="rows, bytes, oldest age, next seq")
    s.add_argument("-c", "--config", required=True, metavar="FILE")
    s.set_defaults(handler=_buffer_stats)

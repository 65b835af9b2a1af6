"""Core subcommands: run, check, schema, demo, buffer stats."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.config import ConfigProblems, json_schema, load_config

EXIT_INVALID = 2


def _run(args: argparse.Namespace) -> int:
    from gateway.agent import run_file  # noqa: PLC0415 - `check` and `schema` stay light

    try:
        return run_file(Path(args.config), debug=args.debug)
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"parkgate: {len(exc.problems)} problem(s) in {args.config}; not starting",
              file=sys.stderr)
        return EXIT_INVALID


def _check(args: argparse.Namespace) -> int:
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
    from gateway import logs  # noqa: PLC0415
    from gateway.buffer import Buffer  # noqa: PLC0415
    from gateway.metrics import Metrics  # noqa: PLC0415

    try:
        loaded = load_config(Path(args.config))
    except ConfigProblems as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    cfg = loaded.config
    if not cfg.buffer.path.exists():
        print(json.dumps({"path": str(cfg.buffer.path), "exists": False}))
        return 0
    logs.configure("warning", "json")

    async def stats() -> dict[str, object]:
        buf = Buffer(cfg.buffer, chunk_max=cfg.uplink.mqtt.batch.max_readings,
                     metrics=Metrics(), log=logs.get_logger(component="buffer"))
        await buf.open()
        try:
            s = await buf.stats()
        finally:
            await buf.close()
        return {"path": str(cfg.buffer.path), "rows": s.readings, "chunks": s.chunks,
                "bytes": s.bytes, "file_bytes": s.file_bytes,
                "oldest_age_seconds": None if s.oldest_age_seconds is None
                else round(s.oldest_age_seconds, 3),
                "next_seq": s.next_seq}

    print(json.dumps(asyncio.run(stats())))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo  # noqa: PLC0415

    return run_demo(seconds=args.seconds, config=Path(args.config) if args.config else None)


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
                   help="demo config (default: config/demo.yaml)")
    p.set_defaults(handler=_demo)

    p = sub.add_parser("buffer", help="inspect the durable buffer")
    bsub = p.add_subparsers(dest="buffer_command", metavar="COMMAND", required=True)
    s = bsub.add_parser("stats", help="rows, bytes, oldest age, next seq")
    s.add_argument("-c", "--config", required=True, metavar="FILE")
    s.set_defaults(handler=_buffer_stats)

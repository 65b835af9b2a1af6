"""The `parkgate` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from gateway import __version__
from gateway.driver import COMMANDS_GROUP
from gateway.errors import ParkgateError

Handler = Callable[[argparse.Namespace], int]


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                         broken: list[str], only: str | None) -> None:
    """Driver commands (`parkgate modbus read ...`) from the `parkgate.commands` group.

    Each entry point is `register(subparsers) -> None`; it adds its parser and sets
    `handler=callable(args) -> int` on it with `set_defaults`. With `only`, just that
    command is imported (its driver and protocol library with it); the others are
    listed by name so `--help` still shows them.
    """
    for ep in entry_points(group=COMMANDS_GROUP):
        if only is not None and ep.name != only:
            sub.add_parser(ep.name, help=f"{ep.name} commissioning commands",
                           add_help=False)
            continue
        try:
            register = ep.load()
            register(sub)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the CLI
            broken.append(f"{ep.name}: {type(exc).__name__}: {exc}")


def _ingest(args: argparse.Namespace) -> int:
    """Imported only here: the agent never loads psycopg or the ingest."""
    from gateway.ingest.cli import run  # noqa: PLC0415

    return run(args)


def build_parser(broken: list[str] | None = None, only: str | None = None
                 ) -> argparse.ArgumentParser:
    """The full argument parser, core commands first, then driver commands."""
    parser = argparse.ArgumentParser(
        prog="parkgate", description="Edge gateway agent for smart industrial parks.")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(handler=lambda _a: print(f"parkgate {__version__}") or 0)

    from gateway import corecli  # noqa: PLC0415 - keeps `parkgate --help` light

    corecli.register(sub)
    from gateway.commands import cli as command_cli  # noqa: PLC0415

    command_cli.register(sub)
    p = sub.add_parser("ingest", help="consume the gateways' MQTT into PostgreSQL, exactly "
                                      "once per (gateway, seq) (needs parkgate[ingest])")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="ingest config file")
    p.add_argument("--instance", default=None, metavar="N",
                   help="appended to the MQTT client id: one stable id per process on a host")
    p.set_defaults(handler=_ingest)
    _add_plugin_commands(sub, broken if broken is not None else [], only)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    broken: list[str] = []
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    wants_help = command is None or "-h" in words or "--help" in words
    # `parkgate run` imports no plug-in command; `parkgate modbus ...` only modbus's
    parser = build_parser(broken, only=None if wants_help else (command or ""))
    args = parser.parse_args(words)
    for line in broken if args.debug else ():
        print(f"parkgate: warning: command plug-in failed to load: {line}", file=sys.stderr)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except ParkgateError as exc:
        if args.debug:
            raise
        print(f"parkgate: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"parkgate: error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1

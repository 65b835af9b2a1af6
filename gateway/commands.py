"""Core subcommands: run, check, schema, demo, buffer stats."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the core subcommands to the `parkgate` parser."""

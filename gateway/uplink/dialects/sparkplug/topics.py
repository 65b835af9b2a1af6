"""Sparkplug topic names (ids are checked by gateway/config.py's `sparkplug_id_problem`)."""

from __future__ import annotations

from gateway.config import sparkplug_id_problem as id_problem

NAMESPACE = "spBv1.0"
__all__ = ["KINDS", "NAMESPACE", "id_problem", "parse_topic", "state_topic", "topic"]

KINDS = ("NBIRTH", "NDEATH", "NDATA", "NCMD", "DBIRTH", "DDEATH", "DDATA", "DCMD")


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    """`spBv1.0/{group}/{kind}/{node}[/{device}]`."""
    base = f"{NAMESPACE}/{group}/{kind}/{node}"
    return base if device is None else f"{base}/{device}"


def state_topic(host: str) -> str:
    """The primary host application's STATE topic (Sparkplug 3.0)."""
    return f"{NAMESPACE}/STATE/{host}"


def parse_topic(text: str) -> tuple[str, str, str, str | None] | None:
    """(group, kind, node, device) of a Sparkplug edge node topic, else None."""
    parts = text.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in KINDS:
        return None
    if (len(parts) == 5) != parts[2].startswith("D"):
        return None
    return parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None

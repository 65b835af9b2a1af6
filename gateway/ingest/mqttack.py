"""Manual acknowledgement through aiomqtt 2.x, which exposes none: the one adapter.

paho-mqtt 2.x sends the PUBACK of a QoS 1 message when its `on_message` returns, unless
`manual_ack_set(True)`; then `ack(mid, qos)` sends it. aiomqtt <3 wraps a paho client in
`Client._client` and offers neither call, so the ingest reaches in here and nowhere else.
tests/ingest/test_mqttack.py pins these internals so an aiomqtt upgrade fails in CI.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt


def _paho(client: aiomqtt.Client) -> Any:
    return client._client  # noqa: SLF001 - aiomqtt <3 exposes no manual ack: this adapter's job


def enable_manual_ack(client: aiomqtt.Client) -> None:
    """Before connecting: PUBACKs are sent only through `ack()`."""
    _paho(client).manual_ack_set(True)


def ack(client: aiomqtt.Client, mid: int, qos: int) -> bool:
    """Send the PUBACK of message `mid` now; False if paho could not queue it."""
    return int(_paho(client).ack(mid, qos)) == 0


def disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """Resolves (or fails) when the connection is lost."""
    fut: asyncio.Future[None] = client._disconnected  # noqa: SLF001 - aiomqtt <3 keeps it private
    return fut

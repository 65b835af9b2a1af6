"""The uplink's two-way part: incoming messages to one handler, retained per-key state.

Incoming: every message on the dialect's subscriptions goes to one registered async
handler, one message at a time, through a bounded queue; the receive loop never waits for
the handler. When `INBOUND_QUEUE` messages wait (a handler far slower than what arrives),
newer messages are dropped and logged: the broker has already had our PUBACK for them, so a
request dropped here gets no reply and its sender retries or gives up by its own rules. A
handler that needs concurrency (commands to different devices) starts its own tasks.

Retained state: the latest `Outgoing` per key (per-device state), published retained when
it changes and again after every reconnect, so a consumer that subscribes late sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiomqtt
from structlog.typing import FilteringBoundLogger

from gateway.uplink import adapter
from gateway.uplink.dialect import DialectSession
from gateway.uplink.messages import Incoming, Outgoing
from gateway.uplink.scheduler import NOT_READY_S

INBOUND_QUEUE = 256
"""Incoming messages waiting for the handler before newer ones are dropped."""

Handler = Callable[[Incoming], Awaitable[None]]
Send = Callable[[Outgoing], Awaitable[str | None]]


class Inbound:
    """A bounded queue of incoming messages and the task that hands them to the handler."""

    def __init__(self, log: FilteringBoundLogger, size: int = INBOUND_QUEUE) -> None:
        self.log = log
        self.handler: Handler | None = None
        self.queue: asyncio.Queue[Incoming] = asyncio.Queue(maxsize=size)
        self.dropped = 0
        """Messages dropped because the queue was full."""

    def offer(self, msg: Incoming) -> bool:
        """Queue `msg` for the handler without waiting; False when dropped."""
        if self.handler is None:
            return False
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                self.log.warning("incoming messages arrive faster than they are handled: "
                                 "dropped (no reply is sent for them)", topic=msg.topic,
                                 dropped=self.dropped, queue=self.queue.maxsize)
            return False
        return True

    async def run(self) -> None:
        """Hand queued messages to the handler, one at a time, until cancelled."""
        while True:
            msg = await self.queue.get()
            handler = self.handler
            if handler is None:
                continue
            try:
                await handler(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("inbound message handler failed", topic=msg.topic)

    async def receive(self, client: aiomqtt.Client, session: DialectSession,
                      send: Send, observed: Callable[[], None]) -> None:
        """One session's receive loop: session control first (`observed()` after it, as it
        may have made the session ready), then the handler's queue."""
        try:
            async for message in client.messages:
                msg = adapter.incoming(message, time.monotonic())
                # session control (a Sparkplug rebirth request) is rare and must go out
                # before what the session publishes next: awaited here
                for out in session.observe(msg):
                    if (refusal := await send(out)) is not None:
                        self.log.warning("broker refused a session message",
                                         topic=out.topic, reason=refusal)
                observed()
                self.offer(msg)
        except (aiomqtt.MqttError, OSError, TimeoutError):
            return  # the connection ended: the publishing side reports it


class RetainedStates:
    """The latest retained message per key, re-published after every reconnect."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.latest: dict[str, Outgoing] = {}
        self._dirty: dict[str, None] = {}  # insertion-ordered set: oldest change first
        self._changed = asyncio.Event()

    def set(self, key: str, out: Outgoing) -> None:
        """Publish `out` under `key` when it differs from the last one.

        The dialect sets the retain flag: the native dialect's device state is retained;
        Sparkplug's DBIRTH/DDEATH must not be (they are sent again after a reconnect all
        the same).
        """
        if self.latest.get(key) == out:
            return
        self.latest[key] = out
        self._dirty[key] = None
        self._changed.set()

    def poke(self) -> None:
        """Look again (the session may have become ready)."""
        self._changed.set()

    async def run(self, send: Send, ready: Callable[[], bool] = lambda: True) -> None:
        """One session: publish every key now, then each change, until cancelled; nothing
        while the session is not `ready()` (Sparkplug: no DBIRTH/DDEATH before NBIRTH)."""
        self._dirty = dict.fromkeys(self.latest)
        try:
            while True:
                self._changed.clear()
                while self._dirty and ready():
                    key = next(iter(self._dirty))
                    out = self.latest[key]
                    refusal = await send(out)
                    if self.latest.get(key) is out:  # not changed meanwhile: done
                        self._dirty.pop(key, None)
                    if refusal is not None:
                        self.log.warning("broker refused a retained state message; sent "
                                         "again when it changes or after a reconnect",
                                         topic=out.topic, reason=refusal)
                if self._dirty:  # not ready: looked at again on a message, or each second
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(NOT_READY_S):  # never swallows a cancel
                            await self._changed.wait()
                else:
                    await self._changed.wait()
        except (aiomqtt.MqttError, OSError, TimeoutError):
            return  # the connection ended: everything goes again on the next one

"""The commands path as the agent runs it: ledger opened, a task per request, an orderly end.

Requests to different devices run at once (each device's lock serialises its own), so the
uplink's single inbound handler only hands a request over (`submit`) and never waits for
a device. At most `MAX_IN_FLIGHT` requests are carried out or wait at once; more are
answered `refused` at once, unrecorded (the sender may send them again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine, Sequence
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway.commands.audit import Audit
from gateway.commands.config import CommandsSection
from gateway.commands.executor import Devices, Executor
from gateway.commands.ledger import Ledger, ledger_path
from gateway.commands.service import Answer, CommandService, Delivery
from gateway.errors import FatalError
from gateway.metrics import Metrics
from gateway.model import Reading

MAX_IN_FLIGHT = 64
Respond = Callable[[Delivery, Answer], Coroutine[Any, Any, None]]
"""Publishes an answer (the uplink's dialect chooses the topic)."""


class CommandRuntime:
    """Owns the ledger and the service; runs each request in a task of its own."""

    def __init__(self, section: CommandsSection, gateway: str, devices: Devices, *,
                 sink: Callable[[Sequence[Reading]], None], metrics: Metrics,
                 log: FilteringBoundLogger, buffer_path: Path) -> None:
        self.section = section
        self.log = log
        self.ledger = Ledger(ledger_path(buffer_path), section.max_age, log)
        self.audit = Audit(sink, metrics, log, lambda: devices.devices)
        self.service = CommandService(
            section, gateway, executor=Executor(devices, log, timeout=section.timeout),
            ledger=self.ledger, audit=self.audit, log=log)
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False
        self.broken: str | None = None
        """Why requests cannot be carried out (the ledger could not be opened)."""

    async def start(self, device_names: Collection[str]) -> None:
        """Open the ledger; warn (at every start) when requests need no signature.

        A ledger that cannot be opened (read-only disk, no space) does not stop the agent
        (the readings matter more): every request is then answered `failed`, saying why.
        """
        try:
            await self.ledger.open()
        except FatalError as exc:
            self.broken = str(exc)
            self.log.error("commands are off: the record of requests cannot be kept",
                           error=self.broken)
        self._open = True
        self.audit.prepare(device_names)
        if not self.section.verify_keys:
            self.log.warning("commands accept UNSIGNED requests (commands.allow_unsigned): "
                             "anyone who may publish on the broker can write to devices; "
                             "configure commands.verify_keys")
        else:
            self.log.info("commands enabled", keys=[k.key_id
                                                    for k in self.section.public_keys()],
                          max_age=self.section.max_age, ledger=str(self.ledger.path))

    def submit(self, delivery: Delivery, respond: Respond) -> None:
        """Carry out and answer `delivery` in a task of its own; never waits."""
        if not self._open:
            return  # not started (the agent starts the uplink only after `start`)
        if self.broken is not None or len(self._tasks) >= MAX_IN_FLIGHT:
            answer = (self.service.unavailable(delivery, self.broken) if self.broken
                      else self.service.busy(delivery, MAX_IN_FLIGHT))
            task = asyncio.create_task(respond(delivery, answer), name="command.busy")
        else:
            task = asyncio.create_task(self._one(delivery, respond), name="command")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _one(self, delivery: Delivery, respond: Respond) -> None:
        try:
            answer = await self.service.handle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not end the agent: log it, answer failed
            self.log.exception("command handling failed")
            answer = self.service.internal_error(delivery)
        try:
            await respond(delivery, answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a reply that cannot go out is logged
            self.log.warning("command reply not sent", id=answer.reply.get("id"),
                             status=answer.outcome.status, error=str(exc))

    async def close(self, grace: float = 5.0) -> None:
        """Answer new requests `failed` (stopping), let running ones end (up to `grace`),
        close the ledger.

        A request cut off here keeps its ledger row without an outcome: delivered again,
        it is answered `duplicate` (outcome unknown), never run twice.
        """
        # requests still arriving (the uplink runs until the end) are answered, not dropped
        self.broken = "the gateway is stopping; send the request again once it is back"
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.ledger.close()

    @property
    def in_flight(self) -> int:
        """Requests being carried out or waiting for their device."""
        return len(self._tasks)




"""Data waits for the platform's answer to the requests that let sub-devices in.

Alibaba Cloud IoT refuses a sub-device's properties posted before its login was processed,
and says so only in the `..._reply` topic: the PUBACK comes all the same and the buffer
deletes what the platform threw away. Huawei IoTDA drops reports of a sub-device it has
not added yet, with no reply at all. So a platform session is not `ready()` until the
platform answered every such request of this connection (`expect()` / `answered()`), or
until `timeout` seconds passed: a platform that never answers (an older version, a reply
topic the ACL does not allow) must not stop data for good, so the gate opens then with a
warning that says what may be lost. Devices whose request the platform refused stay
`withheld()` for this connection: their readings stay in the buffer and go after a later
login that succeeds (the next connection, or the device's next `up`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from structlog.typing import FilteringBoundLogger

LOGIN_TIMEOUT_S = 10.0
"""Default seconds data waits for the platform's answers before it goes anyway."""


class ReplyGate:
    """Requests sent, answers seen, devices refused; open when all are answered or late."""

    def __init__(self, platform: str, request: str, timeout: float,
                 log: FilteringBoundLogger, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.platform = platform
        self.request = request
        """What the requests are, for the log (`combine/batch_login`)."""
        self.timeout = timeout
        self.log = log
        self.clock = clock
        self.pending: dict[str, list[str]] = {}
        """Request id -> the devices it names, not answered yet."""
        self.refused: dict[str, str] = {}
        """Device -> why the platform refused it (held for this connection)."""
        self.deadline = 0.0
        self._withheld: frozenset[str] = frozenset()  # asked for every batch: kept, not built

    def expect(self, rid: str, names: Iterable[str]) -> None:
        """A request `rid` for `names` goes out now; data waits for its answer."""
        if not self.pending:
            self.deadline = self.clock() + self.timeout
        self.pending[rid] = list(names)

    def answered(self, rid: str | None, names: Sequence[str], error: str | None) -> None:
        """The answer to `rid` (without a known id: to the requests naming `names`); `error`
        when the platform refused the devices it names (all of the request's if none)."""
        done = [rid] if rid is not None and rid in self.pending else [
            r for r, ns in self.pending.items() if set(ns) & set(names)]
        devices = list(names) or [n for r in done for n in self.pending[r]]
        for r in done:
            del self.pending[r]
        for name in devices:
            if error is None:
                self.refused.pop(name, None)
                continue
            if self.refused.get(name) != error:
                self.log.error(f"{self.platform} refused a sub-device's {self.request}: its "
                               "readings stay in the buffer until a later one succeeds (the "
                               "next connect, or when the device comes up again)",
                               device=name, reason=error)
            self.refused[name] = error
        self._withheld = frozenset(self.refused)

    def ready(self) -> bool:
        """True once every request was answered, or `timeout` s after the first."""
        if not self.pending:
            return True
        if self.clock() >= self.deadline:
            late = sorted({n for ns in self.pending.values() for n in ns})
            self.log.warning(f"{self.platform} did not answer the {self.request} within "
                             f"{self.timeout:g} s: the sub-devices' readings go anyway; if "
                             "the platform has not let them in yet, it throws those readings "
                             "away after the broker's PUBACK and they are lost. Check that "
                             "the gateway may subscribe to the platform's answer topic",
                             devices=late[:20], count=len(late))
            self.pending.clear()
            return True
        return False

    def withheld(self) -> frozenset[str]:
        """Devices whose data must wait: the platform refused their request."""
        return self._withheld

"""The audit trail: every request and its outcome logged, counted and sent upstream.

Upstream, an audit record travels through the durable buffer like a reading: a `Reading`
of the device the request named (`$commands` when it named none of ours) with metric
`$command` and the record as a JSON string value. It gets a seq, survives outages, reboots
and kill -9 like any reading, and reaches the ingest as `value_text`. `$` cannot start a
point name, so the metric never collides with a device's own. Requests that failed
authentication are sent upstream at most `UNAUTHENTICATED_PER_MINUTE` a minute (all are
logged and counted): whoever floods the command topic must not fill the buffer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway.commands.request import ACTIONS, Outcome
from gateway.metrics import Metrics
from gateway.model import Reading, Value

AUDIT_METRIC = "$command"
NO_DEVICE = "$commands"
UNAUTHENTICATED_PER_MINUTE = 30

Sink = Callable[[Sequence[Reading]], None]


class Audit:
    """Logs, counts and buffers one record per request answered."""

    def __init__(self, sink: Sink, metrics: Metrics, log: FilteringBoundLogger,
                 devices: Callable[[], Collection[str]],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.metrics = metrics
        self.log = log
        self.devices = devices
        self.monotonic = monotonic
        self._window = (0.0, 0)  # minute start, unauthenticated records sent in it
        self.suppressed = 0

    def prepare(self, names: Collection[str]) -> None:
        """Series at 0 for refused and failed commands of every device, so alerts on
        `increase()` see the first one."""
        for device in (*names, "unknown"):
            for action in ACTIONS:
                for status in ("refused", "failed"):
                    self.metrics.commands.labels(device=device, action=action, status=status)

    def record(self, fields: Mapping[str, Any], outcome: Outcome, *, key: str | None,
               authenticated: bool, ts: int, value: Value = None) -> None:
        """One request answered: `fields` as read from it (id, device, action, point)."""
        known = self.devices()
        device = fields.get("device")
        device = device if isinstance(device, str) and device in known else None
        action = fields.get("action") if fields.get("action") in ACTIONS else "invalid"
        self.metrics.commands.labels(device=device or "unknown", action=action,
                                     status=outcome.status).inc()
        record: dict[str, Any] = {
            "id": fields.get("id"), "device": fields.get("device"), "action": action,
            "point": fields.get("point"), "status": outcome.status, "key": key,
        }
        if action == "write":
            record["old"] = outcome.old
            record["new"] = value
        if outcome.has_value:
            record["value"] = outcome.value
        if outcome.error is not None:
            record["error"] = outcome.error
        if outcome.code is not None:
            record["code"] = outcome.code
        level = self.log.info if outcome.status in ("ok", "duplicate") else self.log.warning
        level("command", **record)
        if not authenticated and not self._take():
            self.suppressed += 1
            return
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
        self.sink([Reading(device or NO_DEVICE, AUDIT_METRIC, text, ts)])

    def _take(self) -> bool:
        now = self.monotonic()
        start, sent = self._window
        if now - start >= 60.0:
            start, sent = now, 0
        if sent >= UNAUTHENTICATED_PER_MINUTE:
            self._window = (start, sent)
            return False
        self._window = (start, sent + 1)
        return True

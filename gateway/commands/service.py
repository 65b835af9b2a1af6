"""One request from arrival to answer: parse, authenticate, expire, de-duplicate, run, audit.

Transport-free: the uplink hands over what its dialect decoded (`Delivery`) and publishes
the `Answer`; tests drive `handle()` directly with real keys, a real ledger and the sim.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway.commands.audit import Audit
from gateway.commands.config import CommandsSection
from gateway.commands.executor import Executor
from gateway.commands.ledger import Ledger
from gateway.commands.request import (
    BadRequest,
    Outcome,
    Request,
    expiry_problem,
    parse_document,
    reply_doc,
)
from gateway.commands.signing import SignatureProblem, Verifier
from gateway.model import now_ms


@dataclass(frozen=True, slots=True)
class Delivery:
    """A request as the dialect decoded it, with what MQTT 5 said about it."""

    document: Mapping[str, Any] | None
    """The request's JSON object; None when it could not be decoded (see `error`)."""
    error: str | None = None
    """Why the dialect would not make a request of it: answered refused, echoing what
    `document` holds of id, device, action and point."""
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_interval: int | None = None
    """Seconds of message expiry left when the broker delivered it."""
    received: float | None = None
    """`time.monotonic()` at arrival."""
    unsigned_ok: bool = False
    """The dialect's own config lets this request come without a signature (Sparkplug
    `allow_unsigned_dcmd`); a signature it does carry must still be valid."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to send and where: the request's response topic only when it was signed
    (or unsigned requests are allowed), else the configured reply topic (None here)."""

    reply: dict[str, Any]
    outcome: Outcome
    response_topic: str | None = None
    correlation_data: bytes | None = None


class CommandService:
    """Answers requests; see the module docstring of `gateway.commands` for the path."""

    def __init__(self, section: CommandsSection, gateway: str, *, executor: Executor,
                 ledger: Ledger, audit: Audit, log: FilteringBoundLogger,
                 clock: Callable[[], int] = now_ms,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.section = section
        self.gateway = gateway
        self.executor = executor
        self.ledger = ledger
        self.audit = audit
        self.log = log
        self.clock = clock
        self.monotonic = monotonic
        keys = section.public_keys()
        self.verifier = Verifier(keys) if keys else None
        self._running: set[str] = set()
        """Ids being carried out now (a ledger row without outcome is not always a crash)."""

    async def handle(self, delivery: Delivery) -> Answer:
        """Answer one request; never raises for anything the request contains."""
        try:
            if delivery.document is None or delivery.error is not None:
                raise BadRequest(delivery.error or "the request could not be decoded",
                                 _fields(delivery))
            req = parse_document(delivery.document)
        except BadRequest as exc:
            return self._answer(exc.fields, Outcome("refused", str(exc)), delivery,
                                key=None, authenticated=False)
        fields = {"id": req.id, "device": req.device, "action": req.action,
                  "point": req.point}
        key: str | None = None
        if self.verifier is not None and not (delivery.unsigned_ok and req.sig is None):
            try:
                key = self.verifier.verify(req.canonical, req.sig)
            except SignatureProblem as exc:
                return self._answer(fields, Outcome("refused", str(exc)), delivery,
                                    key=None, authenticated=False)
        return await self._authenticated(req, delivery, key)

    async def _authenticated(self, req: Request, delivery: Delivery,
                             key: str | None) -> Answer:
        fields = {"id": req.id, "device": req.device, "action": req.action,
                  "point": req.point}

        def answer(outcome: Outcome, first: Outcome | None = None) -> Answer:
            return self._answer(fields, outcome, delivery, key=key, authenticated=True,
                                value=req.value, first=first)

        deadline = self._deadline(delivery)

        def stale() -> str | None:
            return expiry_problem(req.ts, self.clock(), self.section.max_age, deadline)

        problem = stale()
        if problem is not None:
            return answer(Outcome("expired", problem))
        if req.ts < self.ledger.since:
            return answer(Outcome("refused", (
                "the record of requests seen was lost (a corrupt file was set aside); a "
                "request made before the gateway started a new one cannot be checked for "
                "duplicates: send a new request")))
        seen = await self.ledger.claim(req)
        if seen is not None:
            if not seen.same:
                return answer(Outcome("refused", (
                    f"the id {req.id} was used before by a different request: every "
                    "request needs a new id")))
            if seen.outcome is None and req.id in self._running:
                return answer(Outcome("duplicate", (
                    "this request is being carried out now (an earlier delivery); it is "
                    "not run twice: its reply follows")))
            if seen.outcome is None:
                return answer(Outcome("duplicate", (
                    "this request was received before and the gateway stopped while "
                    "carrying it out: whether it took effect is unknown (it is not run "
                    "again); read the point, then send a new request if needed")))
            return answer(Outcome("duplicate", (
                f"this request was received before and answered {seen.outcome.status}; "
                "it is not run again")), first=seen.outcome)
        self._running.add(req.id)
        try:
            outcome = await self.executor.run(req, stale)
            try:
                await self.ledger.finish(req, outcome)
            except (sqlite3.Error, OSError) as exc:
                # the command ran: say what it did; a repeat is answered "outcome unknown"
                self.log.error("command outcome not recorded", id=req.id,
                               status=outcome.status, error=str(exc))
        finally:
            self._running.discard(req.id)
        return answer(outcome)

    def busy(self, delivery: Delivery, limit: int) -> Answer:
        """The answer when `limit` requests are already under way (nothing recorded)."""
        return self._answer(_fields(delivery), Outcome("refused", (
            f"the gateway is carrying out {limit} requests already: send this one again "
            "later")), delivery, key=None, authenticated=False)

    def unavailable(self, delivery: Delivery, why: str) -> Answer:
        """The answer while requests cannot be recorded (nothing is carried out)."""
        return self._answer(_fields(delivery), Outcome("failed", (
            f"commands are unavailable on this gateway: {why}")), delivery, key=None,
            authenticated=False)

    def internal_error(self, delivery: Delivery) -> Answer:
        """The answer when handling raised (a bug): failed, see the log."""
        return self._answer(_fields(delivery), Outcome("failed", (
            "internal error in the gateway; see its log")), delivery, key=None,
            authenticated=False)

    def _deadline(self, delivery: Delivery) -> int | None:
        """The MQTT 5 message expiry as epoch ms."""
        if delivery.expiry_interval is None:
            return None
        waited = 0.0 if delivery.received is None else self.monotonic() - delivery.received
        return self.clock() - round(waited * 1000) + delivery.expiry_interval * 1000

    def _answer(self, fields: Mapping[str, Any], outcome: Outcome, delivery: Delivery, *,
                key: str | None, authenticated: bool, value: Any = None,
                first: Outcome | None = None) -> Answer:
        ts = self.clock()
        self.audit.record(fields, outcome, key=key, authenticated=authenticated, ts=ts,
                          value=value)
        reply = reply_doc(self.gateway, fields, outcome, ts, first)
        if authenticated and delivery.response_topic:
            return Answer(reply, outcome, delivery.response_topic, delivery.correlation_data)
        # an unauthenticated request does not choose where the gateway publishes
        return Answer(reply, outcome, None,
                      delivery.correlation_data if authenticated else None)


def _fields(delivery: Delivery) -> dict[str, Any]:
    """What a reply can echo of a request without parsing it."""
    doc = delivery.document or {}
    return {k: doc[k] for k in ("id", "device", "action", "point")
            if isinstance(doc.get(k), str) and len(doc[k]) <= 128}

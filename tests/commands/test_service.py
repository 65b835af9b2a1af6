"""A request from arrival to answer, with real keys, a real ledger file and sim devices."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.commands.audit import AUDIT_METRIC, NO_DEVICE, UNAUTHENTICATED_PER_MINUTE, Audit
from gateway.commands.config import CommandsSection
from gateway.commands.executor import Executor
from gateway.commands.ledger import Ledger
from gateway.commands.request import canonical_form
from gateway.commands.service import CommandService, Delivery
from gateway.commands.signing import Signer, keygen
from gateway.model import Reading, now_ms
from tests.commands.harness import Rig, boiler, rig
from tests.support import metric_value

LOG = logs.get_logger()


class Env:
    def __init__(self, r: Rig, service: CommandService, signer: Signer,
                 audits: list[Reading]) -> None:
        self.rig = r
        self.service = service
        self.signer = signer
        self.audits = audits

    def doc(self, action: str = "write", point: str | None = "setpoint", value: Any = 21.5,
            *, sign: bool = True, **extra: Any) -> dict[str, Any]:
        d: dict[str, Any] = {"v": 1, "id": str(uuid.uuid4()), "ts": now_ms(),
                             "device": "boiler", "action": action}
        if point is not None:
            d["point"] = point
        if action == "write":
            d["value"] = value
        d.update(extra)
        if sign:
            d["sig"] = self.signer.sign(canonical_form(d))
        return d

    async def send(self, doc: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
        answer = await self.service.handle(Delivery(doc, **kw))
        return answer.reply


async def make(tmp_path: Path, r: Rig, **section: Any) -> Env:
    pub, _ = keygen(tmp_path / "op.key")
    cfg = CommandsSection.model_validate({"enabled": True, "max_age": "5s",
                                          "verify_keys": [pub.read_text()], **section})
    audits: list[Reading] = []
    ledger = Ledger(tmp_path / "buffer.db.commands.db", cfg.max_age, LOG)
    await ledger.open()
    audit = Audit(audits.extend, r.metrics, LOG, lambda: r.sup.devices)
    service = CommandService(cfg, "gw1", executor=Executor(r.sup, LOG), ledger=ledger,
                             audit=audit, log=LOG)
    return Env(r, service, Signer.from_file(tmp_path / "op.key"), audits)


def count(env: Env, status: str, action: str = "write", device: str = "boiler") -> float:
    return metric_value(env.rig.metrics, "parkgate_commands_total", device=device,
                        action=action, status=status)


async def test_signed_write_read_and_audit(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        doc = env.doc(value=42.0)
        reply = await env.send(doc)
        assert reply == {"v": 1, "id": doc["id"], "gateway": "gw1", "device": "boiler",
                         "action": "write", "point": "setpoint", "status": "ok",
                         "value": 42.0, "ts": reply["ts"]}
        assert abs(reply["ts"] - now_ms()) < 2000
        assert r.driver("boiler").values["setpoint"] == 42.0
        read = await env.send(env.doc("read", "setpoint"))
        assert (read["status"], read["value"]) == ("ok", 42.0)
        assert count(env, "ok") == 1 and count(env, "ok", "read") == 1
        audit = json.loads(str(env.audits[0].value))
        assert env.audits[0][:2] == ("boiler", AUDIT_METRIC)
        assert audit == {"id": doc["id"], "device": "boiler", "action": "write",
                         "point": "setpoint", "status": "ok", "key": env.signer.key_id,
                         "old": 20.0, "new": 42.0, "value": 42.0}


async def test_unsigned_and_badly_signed_are_refused_untouched(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        unsigned = env.doc(value=50, sign=False)
        reply = await env.send(unsigned, response_topic="attacker/topic",
                               correlation_data=b"x")
        assert reply["status"] == "refused"
        assert "not signed" in reply["error"]
        tampered = env.doc(value=50)
        tampered["value"] = 80
        reply = await env.send(tampered)
        assert reply["status"] == "refused" and "matches none" in reply["error"]
        keygen(tmp_path / "other.key")
        forged = env.doc(value=50, sign=False)
        forged["sig"] = Signer.from_file(tmp_path / "other.key").sign(canonical_form(forged))
        assert (await env.send(forged))["status"] == "refused"
        assert r.driver("boiler").writes == 0
        assert count(env, "refused") == 3
        # the request, not signed, does not choose where the gateway publishes
        answer = await env.service.handle(Delivery(unsigned, response_topic="a/b",
                                                   correlation_data=b"c"))
        assert answer.response_topic is None and answer.correlation_data is None
        signed = await env.service.handle(Delivery(env.doc("read", "flow"),
                                                   response_topic="a/b", correlation_data=b"c"))
        assert (signed.response_topic, signed.correlation_data) == ("a/b", b"c")


async def test_expired_by_ts_and_by_message_expiry(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        old = env.doc(value=30, ts=now_ms() - 6000)
        old["sig"] = env.signer.sign(canonical_form(old))
        reply = await env.send(old)
        assert reply["status"] == "expired" and "max_age is 5 s" in reply["error"]
        ahead = env.doc(value=30, ts=now_ms() + 60_000)
        ahead["sig"] = env.signer.sign(canonical_form(ahead))
        assert (await env.send(ahead))["status"] == "expired"
        # the broker said 1 s of expiry was left, and the request waited 2 s here
        late = await env.send(env.doc(value=30), expiry_interval=1,
                              received=time.monotonic() - 2)
        assert late["status"] == "expired" and "MQTT message expiry" in late["error"]
        assert r.driver("boiler").writes == 0
        assert count(env, "expired") == 3
        # expired requests are not recorded: the ledger holds nothing
        assert await env.service.ledger.count() == 0


async def test_duplicate_runs_once_with_first_outcome(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        doc = env.doc(point="valve", value=1)
        first = await env.send(doc)
        assert (first["status"], first["code"]) == ("failed", 2)
        again = await env.send(doc)
        assert again["status"] == "duplicate"
        assert again["first"] == {"status": "failed", "error": first["error"], "code": 2}
        ok = env.doc(value=33.0)
        await env.send(ok)
        dup = await env.send(ok)
        assert (dup["status"], dup["value"]) == ("duplicate", 33.0)
        assert r.driver("boiler").writes == 2
        # the same id on another request is refused, not answered with the first outcome
        reuse = env.doc(value=34.0, id=ok["id"])
        reply = await env.send(reuse)
        assert reply["status"] == "refused" and "used before by a different request" in \
            reply["error"]


async def test_bad_payloads_and_unknown_device(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        reply = await env.send(None, error="the request is not JSON")
        assert reply["status"] == "refused" and reply["id"] is None
        reply = await env.send(env.doc(device="ghost"))
        assert reply["status"] == "refused" and reply["error"] == "unknown device 'ghost'"
        assert count(env, "refused", device="unknown") == 1
        assert count(env, "refused", action="invalid", device="unknown") == 1
        assert [a.device for a in env.audits] == [NO_DEVICE, NO_DEVICE]


async def test_unauthenticated_audit_upstream_is_rate_limited(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        for _ in range(UNAUTHENTICATED_PER_MINUTE + 10):
            await env.send(env.doc(sign=False))
        assert len(env.audits) == UNAUTHENTICATED_PER_MINUTE
        assert count(env, "refused") == UNAUTHENTICATED_PER_MINUTE + 10
        await env.send(env.doc("read", "flow"))  # authenticated: always sent
        assert len(env.audits) == UNAUTHENTICATED_PER_MINUTE + 1


async def test_allow_unsigned(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r, verify_keys=[], allow_unsigned=True)
        reply = await env.send(env.doc(value=25.0, sign=False))
        assert reply["status"] == "ok"
        assert json.loads(str(env.audits[0].value))["key"] is None


async def test_duplicate_while_the_first_is_still_running(tmp_path: Path) -> None:
    import asyncio

    async with rig([boiler(write_delay=0.3)]) as r:
        env = await make(tmp_path, r)
        doc = env.doc(point="pump_on", value=True)
        first = asyncio.create_task(env.send(doc))
        await asyncio.sleep(0.05)
        second = await env.send(doc)
        assert second["status"] == "duplicate"
        assert "being carried out now" in second["error"]
        assert (await first)["status"] == "ok"
        assert r.driver("boiler").writes == 1


async def test_an_outcome_the_ledger_cannot_record_is_still_answered(tmp_path: Path) -> None:
    import asyncio

    async with rig([boiler(write_delay=0.2)]) as r:
        env = await make(tmp_path, r)
        task = asyncio.create_task(env.send(env.doc(point="pump_on", value=True)))
        await asyncio.sleep(0.05)
        ledger = env.service.ledger
        await ledger._call(ledger._db.close)  # the file goes away under a running command
        reply = await task
        assert reply["status"] == "ok"  # what the device did, not an internal error
        assert r.driver("boiler").values["pump_on"] is True


async def test_dialect_errors_and_unsigned_ok(tmp_path: Path) -> None:
    async with rig([boiler()]) as r:
        env = await make(tmp_path, r)
        # a dialect that could read the request but will not pass it on: refused, echoed
        doc = env.doc(sign=False)
        reply = await env.send(doc, error="the DCMD carries no signature")
        assert (reply["status"], reply["id"], reply["error"]) == (
            "refused", doc["id"], "the DCMD carries no signature")
        # the dialect's own config lets it come unsigned: carried out, key None
        ok = await env.send(env.doc(value=33.0, sign=False), unsigned_ok=True)
        assert ok["status"] == "ok"
        assert json.loads(str(env.audits[-1].value))["key"] is None
        # but a signature it does carry must be valid
        forged = env.doc(value=34.0)
        forged["value"] = 35.0
        assert (await env.send(forged, unsigned_ok=True))["status"] == "refused"
        assert r.driver("boiler").values["setpoint"] == 33.0

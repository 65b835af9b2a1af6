"""The runtime: a task per request, devices in parallel, a cap, and an orderly close."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.commands import runtime as runtime_mod
from gateway.commands.config import CommandsSection
from gateway.commands.ledger import Ledger
from gateway.commands.request import canonical_form, parse_document
from gateway.commands.runtime import CommandRuntime
from gateway.commands.service import Answer, Delivery
from gateway.model import Reading, now_ms
from tests.commands.harness import boiler, rig

LOG = logs.get_logger()


def doc(device: str, point: str, value: Any) -> dict[str, Any]:
    return {"v": 1, "id": str(uuid.uuid4()), "ts": now_ms(), "device": device,
            "action": "write", "point": point, "value": value}


async def test_devices_in_parallel_and_close_leaves_unknown(tmp_path: Path) -> None:
    section = CommandsSection(enabled=True, allow_unsigned=True)
    audits: list[Reading] = []
    async with rig([boiler(write_delay=0.3), boiler(name="other")]) as r:
        rt = CommandRuntime(section, "gw", r.sup, sink=audits.extend, metrics=r.metrics,
                            log=LOG, buffer_path=tmp_path / "buffer.db")
        await rt.start(["boiler", "other"])
        answers: dict[str, tuple[float, Answer]] = {}
        started = time.monotonic()

        async def respond(d: Delivery, a: Answer) -> None:
            answers[str(a.reply["id"])] = (time.monotonic() - started, a)

        slow1, slow2 = doc("boiler", "pump_on", True), doc("boiler", "mode", "manual")
        fast = doc("other", "pump_on", True)
        for d in (slow1, slow2, fast):
            rt.submit(Delivery(d), respond)
        assert rt.in_flight == 3
        async with asyncio.timeout(5):
            while fast["id"] not in answers or slow1["id"] not in answers:
                await asyncio.sleep(0.01)
        # "other" did not wait for "boiler"; boiler's second request is still running
        assert answers[fast["id"]][0] < 0.2
        assert answers[fast["id"]][1].outcome.status == "ok"
        assert slow2["id"] not in answers
        await rt.close(grace=0.05)  # cuts slow2 off mid-write
        assert slow2["id"] not in answers
        assert rt.in_flight == 0
        late = doc("other", "pump_on", False)  # arrives while the gateway stops
        rt.submit(Delivery(late), respond)
        async with asyncio.timeout(5):
            while late["id"] not in answers:
                await asyncio.sleep(0.01)
        stopping = answers[late["id"]][1]
        assert stopping.outcome.status == "failed"
        assert "the gateway is stopping" in str(stopping.reply["error"])
    ledger = Ledger(tmp_path / "buffer.db.commands.db", 30.0, LOG)
    await ledger.open()
    seen = await ledger.claim(parse_document(slow2))
    assert seen is not None and seen.outcome is None  # cut off: outcome unknown
    seen = await ledger.claim(parse_document(slow1))
    assert seen is not None and seen.outcome is not None and seen.outcome.status == "ok"
    await ledger.close()
    assert canonical_form(slow1)  # the documents were not changed by handling


async def test_cap_on_requests_in_flight(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime_mod, "MAX_IN_FLIGHT", 2)
    section = CommandsSection(enabled=True, allow_unsigned=True)
    async with rig([boiler(write_delay=0.2)]) as r:
        rt = CommandRuntime(section, "gw", r.sup, sink=lambda _r: None, metrics=r.metrics,
                            log=LOG, buffer_path=tmp_path / "buffer.db")
        await rt.start(["boiler"])
        got: list[Answer] = []

        async def respond(d: Delivery, a: Answer) -> None:
            got.append(a)

        docs = [doc("boiler", "mode", "manual") for _ in range(3)]
        for d in docs:
            rt.submit(Delivery(d), respond)
        async with asyncio.timeout(5):
            while len(got) < 3:
                await asyncio.sleep(0.01)
        busy = [a for a in got if a.outcome.status == "refused"]
        assert len(busy) == 1 and busy[0].reply["id"] == docs[2]["id"]
        assert "carrying out 2 requests already" in str(busy[0].reply["error"])
        await rt.close()


async def test_unusable_ledger_answers_failed_and_keeps_the_agent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    section = CommandsSection(enabled=True, allow_unsigned=True)
    async with rig([boiler()]) as r:
        rt = CommandRuntime(section, "gw", r.sup, sink=lambda _r: None, metrics=r.metrics,
                            log=LOG, buffer_path=tmp_path / "file" / "buffer.db")
        await rt.start(["boiler"])
        assert rt.broken is not None and "cannot open the command ledger" in rt.broken
        got: list[Answer] = []

        async def respond(d: Delivery, a: Answer) -> None:
            got.append(a)

        rt.submit(Delivery(doc("boiler", "mode", "manual")), respond)
        async with asyncio.timeout(5):
            while not got:
                await asyncio.sleep(0.01)
        assert got[0].outcome.status == "failed"
        assert "commands are unavailable on this gateway" in str(got[0].reply["error"])
        assert r.driver("boiler").writes == 0
        await rt.close()

"""The ledger of requests seen: real SQLite files, a real kill -9, pruning and corruption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import structlog

from gateway.commands.ledger import MARGIN_MS, Ledger, ledger_path
from gateway.commands.request import Outcome, parse_request
from tests.support import ROOT

LOG = structlog.get_logger()


def _req(rid: str = "r1", ts: int = 1_000_000, value: float = 21.5):  # type: ignore[no-untyped-def]
    return parse_request(json.dumps({"v": 1, "id": rid, "ts": ts, "device": "boiler",
                                     "action": "write", "point": "sp",
                                     "value": value}).encode())


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def test_claim_finish_and_duplicate(tmp_path: Path) -> None:
    path = ledger_path(tmp_path / "buffer.db")
    assert path.name == "buffer.db.commands.db"
    clock = Clock(1_000_000)
    ledger = Ledger(path, 30.0, LOG, clock=clock)
    await ledger.open()
    try:
        assert ledger.since == 0
        assert await ledger.claim(_req()) is None
        seen = await ledger.claim(_req())
        assert seen is not None and seen.same and seen.outcome is None
        await ledger.finish(_req(), Outcome("ok", value=21.5, has_value=True))
        seen = await ledger.claim(_req())
        assert seen is not None and seen.outcome == Outcome("ok", value=21.5, has_value=True)
        other = await ledger.claim(_req(value=80.0))  # same id, another request
        assert other is not None and not other.same
    finally:
        await ledger.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()
    assert path.stat().st_mode & 0o777 == 0o600
    # kept across a restart
    again = Ledger(path, 30.0, LOG, clock=clock)
    await again.open()
    seen = await again.claim(_req())
    assert seen is not None and seen.outcome is not None and seen.outcome.status == "ok"
    await again.close()


async def test_rows_pruned_once_no_longer_valid(tmp_path: Path) -> None:
    clock = Clock(1_000_000)
    ledger = Ledger(tmp_path / "l.db", 30.0, LOG, clock=clock)
    await ledger.open()
    await ledger.claim(_req("old", ts=1_000_000))
    await ledger.claim(_req("future", ts=1_020_000))  # ts ahead of the gateway's clock
    clock.now = 1_000_000 + 30_000 + MARGIN_MS + 1  # past keep_until of "old" only
    await ledger.claim(_req("new", ts=clock.now))
    assert await ledger.count() == 2
    assert await ledger.claim(_req("future", ts=1_020_000)) is not None
    clock.now += 61_000  # pruned at most once a minute
    await ledger.claim(_req("newer", ts=clock.now))
    assert await ledger.count() == 2  # "future" went too
    await ledger.close()


CLAIM_THEN_HANG = textwrap.dedent("""
    import asyncio, json, sys, structlog
    from pathlib import Path
    from gateway.commands.ledger import Ledger
    from gateway.commands.request import Outcome, parse_request

    async def main():
        ledger = Ledger(Path(sys.argv[1]), 30.0, structlog.get_logger())
        await ledger.open()
        for rid in ("done", "running"):
            req = parse_request(json.dumps({"v": 1, "id": rid, "ts": 1, "device": "d",
                                            "action": "sync_time"}).encode())
            assert await ledger.claim(req) is None
            if rid == "done":
                await ledger.finish(req, Outcome("failed", "no", code=2))
        print("claimed", flush=True)
        await asyncio.Event().wait()  # "executing" when killed

    asyncio.run(main())
""")


async def test_kill_9_between_claim_and_outcome(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_THEN_HANG, str(path)],
                            stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"claimed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    ledger = Ledger(path, 30.0, LOG, clock=Clock(2))
    await ledger.open()
    for rid, outcome in (("done", Outcome("failed", "no", code=2)), ("running", None)):
        req = parse_request(json.dumps({"v": 1, "id": rid, "ts": 1, "device": "d",
                                        "action": "sync_time"}).encode())
        seen = await ledger.claim(req)
        assert seen is not None and seen.same and seen.outcome == outcome
    await ledger.close()


async def test_corrupt_file_moved_aside_and_older_requests_unknown(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not a database" * 100)
    ledger = Ledger(path, 30.0, LOG, clock=Clock(5_000))
    await ledger.open()
    assert ledger.since == 5_000
    assert await ledger.claim(_req()) is None
    await ledger.close()
    assert [p.name for p in tmp_path.glob("l.db.corrupt-*")]


async def test_service_refuses_requests_older_than_a_replaced_ledger(tmp_path: Path) -> None:
    from gateway.commands.audit import Audit
    from gateway.commands.config import CommandsSection
    from gateway.commands.executor import Executor
    from gateway.commands.service import CommandService, Delivery
    from gateway.metrics import Metrics
    from gateway.model import now_ms
    from tests.commands.harness import boiler, rig

    path = tmp_path / "l.db"
    path.write_bytes(b"garbage" * 1000)
    ledger = Ledger(path, 30.0, LOG)
    await ledger.open()
    async with rig([boiler()]) as r:
        service = CommandService(
            CommandsSection(enabled=True, allow_unsigned=True), "gw",
            executor=Executor(r.sup, LOG), ledger=ledger,
            audit=Audit(lambda _r: None, Metrics(), LOG, lambda: r.sup.devices), log=LOG)
        before = {"v": 1, "id": "x1", "ts": ledger.since - 1000, "device": "boiler",
                  "action": "write", "point": "mode", "value": "manual"}
        answer = await service.handle(Delivery(before))
        assert answer.outcome.status == "refused"
        assert "record of requests seen was lost" in str(answer.outcome.error)
        after = {**before, "id": "x2", "ts": now_ms()}
        assert (await service.handle(Delivery(after))).outcome.status == "ok"
        assert r.driver("boiler").writes == 1
    await ledger.close()

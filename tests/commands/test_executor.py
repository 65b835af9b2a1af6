"""The executor on a real supervisor with sim devices: limits, locks, timeouts, errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from drivers.sim import SimOptions
from gateway import logs
from gateway.commands.executor import Executor, limit_problem, outcome_of
from gateway.commands.request import Outcome, Request, parse_request
from gateway.driver import WriteLimits
from gateway.errors import (
    DeviceRejected,
    ProtocolError,
    TransientError,
    VerifyFailed,
    WriteRefused,
)
from tests.commands.harness import boiler, rig

LOG = logs.get_logger()


def req(action: str = "write", point: str | None = "setpoint", value: Any = 21.5,
        device: str = "boiler") -> Request:
    doc: dict[str, Any] = {"v": 1, "id": f"id-{time.monotonic_ns()}", "ts": 1,
                           "device": device, "action": action}
    if point is not None:
        doc["point"] = point
    if action == "write":
        doc["value"] = value
    return parse_request(json.dumps(doc).encode())


def fresh() -> None:
    return None


@pytest.mark.parametrize(("limits", "value", "says"), [
    ({"min": 5, "max": 80}, 21.5, None),
    ({"min": 5, "max": 80}, 5, None),
    ({"min": 5, "max": 80}, 80.0, None),
    ({"min": 5, "max": 80}, 4.99, "below the minimum 5"),
    ({"min": 5, "max": 80}, 81, "above the maximum 80"),
    ({"min": 5}, 1e300, None),
    ({"max": 1}, True, "takes a number"),
    ({"max": 1}, "1", "takes a number"),
    ({"values": ["auto", "manual"]}, "auto", None),
    ({"values": ["auto", "manual"]}, "off", "not one of the values allowed ('auto', 'manual')"),
    ({"values": [0, 1]}, 1.0, None),
    ({"values": [0, 1]}, True, "not one of"),
    ({"values": [True]}, 1, "not one of"),
    ({}, "anything", None),
])
def test_limits(limits: dict[str, Any], value: Any, says: str | None) -> None:
    problem = limit_problem("p", WriteLimits.model_validate(limits), value)
    assert (problem is None) if says is None else (says in (problem or "")), problem


@pytest.mark.parametrize(("exc", "status", "says", "code"), [
    (WriteRefused("p: cannot encode"), "refused", "p: cannot encode", None),
    (DeviceRejected("illegal data value (exception code 3)", code=3), "failed",
     "the device refused: illegal data value (exception code 3)", 3),
    (DeviceRejected("NAK", code=7), "failed", "the device refused: NAK (code 7)", 7),
    (VerifyFailed("wrote 1 read 2"), "failed", "read back differs", None),
    (TimeoutError(), "failed", "no answer from the device within 2 s", None),
    (ProtocolError("bad CRC"), "failed", "did not answer (protocol): bad CRC", None),
    (TransientError("link down"), "failed", "(transient)", None),
    (ConnectionResetError("reset"), "failed", "link failed", None),
    (ZeroDivisionError("bug"), "failed", "internal error (ZeroDivisionError: bug)", None),
])
def test_outcome_of(exc: BaseException, status: str, says: str, code: int | None) -> None:
    out = outcome_of(exc, 2.0)
    assert out.status == status
    assert out.error is not None and says in out.error
    assert out.code == code


async def test_write_read_poll_sync_on_sim() -> None:
    async with rig([boiler()]) as r:
        ex = Executor(r.sup, LOG)
        sim = r.driver("boiler")
        out = await ex.run(req(value=21.5), fresh)
        assert out == Outcome("ok", value=21.5, has_value=True, old=20.0)
        assert sim.values["setpoint"] == 21.5
        assert (await ex.run(req("read", "setpoint"), fresh)).value == 21.5
        assert (await ex.run(req("read", "flow"), fresh)).value == 3.5
        out = await ex.run(req(point="pump_on", value=True), fresh)
        assert out.status == "ok" and sim.values["pump_on"] is True and out.old is False
        out = await ex.run(req(point="steps", value=3), fresh)  # verify: false
        assert out == Outcome("ok", old=0)
        before = len(r.got)
        assert await ex.run(req("poll", None), fresh) == Outcome("ok")
        assert len(r.got) == before + 7
        assert await ex.run(req("sync_time", None), fresh) == Outcome("ok")
        assert sim.clock_synced_at is not None


async def test_refusals_never_reach_the_device() -> None:
    async with rig([boiler()]) as r:
        ex = Executor(r.sup, LOG)
        sim = r.driver("boiler")
        cases = [
            (req(value=99), "above the maximum 80"),
            (req(value="hot"), "takes a number"),
            (req(point="flow", value=1.0), "'flow' is not a writable point"),
            (req(point="nope", value=1.0), "'nope' is not a writable point"),
            (req(point="mode", value="off"), "not one of"),
            (req(point="pump_on", value=1), "holds a bool; cannot write 1"),
            (req(device="ghost"), "unknown device 'ghost'"),
            (req("read", "nope"), "nope: no such point"),
        ]
        for request, says in cases:
            out = await ex.run(request, fresh)
            assert out.status == "refused", (request, out)
            assert out.error is not None and says in out.error
        assert sim.writes == 0
        assert sim.values["setpoint"] == 20.0


async def test_min_interval() -> None:
    async with rig([boiler()]) as r:
        ex = Executor(r.sup, LOG)
        assert (await ex.run(req(value=30), fresh)).status == "ok"
        out = await ex.run(req(value=31), fresh)
        assert out.status == "refused" and "min_interval is 0.5 s" in (out.error or "")
        await asyncio.sleep(0.55)
        assert (await ex.run(req(value=31), fresh)).status == "ok"
        assert r.driver("boiler").writes == 2


async def test_device_errors_are_failed() -> None:
    async with rig([boiler()]) as r:
        ex = Executor(r.sup, LOG)
        out = await ex.run(req(point="valve", value=1), fresh)
        assert out.status == "failed" and out.code == 2
        assert out.error == ("the device refused: valve: the device refused the write "
                             "(exception code 2)")
        out = await ex.run(req(point="drifty", value=5), fresh)
        assert out.status == "failed" and "wrote 5 but the device holds 6" in (out.error or "")


async def test_timeout() -> None:
    async with rig([boiler(write_delay=0.5)]) as r:
        ex = Executor(r.sup, LOG, timeout=0.2)
        started = time.monotonic()
        out = await ex.run(req(point="pump_on", value=True), fresh)
        assert out.status == "failed"
        assert out.error == "no answer from the device within 0.2 s"
        assert time.monotonic() - started < 0.4


async def test_one_command_at_a_time_per_device_others_go_on() -> None:
    slow = boiler(write_delay=0.3)
    fast = boiler(name="other", write_delay=0.0)
    async with rig([slow, fast]) as r:
        ex = Executor(r.sup, LOG)
        started = time.monotonic()
        done: dict[str, float] = {}

        async def timed(label: str, request: Request) -> Outcome:
            out = await ex.run(request, fresh)
            done[label] = time.monotonic() - started
            return out

        outs = await asyncio.gather(
            timed("a", req(point="pump_on", value=True)),
            timed("b", req(point="mode", value="manual")),
            timed("other", req(point="pump_on", value=True, device="other")))
        assert [o.status for o in outs] == ["ok", "ok", "ok"]
        # each slow write reads the old value first: 2 x 0.3 s per command, serialised
        assert done["other"] < 0.15
        assert 0.55 < done["a"] < 0.8
        assert done["b"] > 1.15


async def test_staleness_checked_once_the_lock_is_held() -> None:
    async with rig([boiler(write_delay=0.3)]) as r:
        ex = Executor(r.sup, LOG)
        expired_at = time.monotonic() + 0.2

        def stale() -> str | None:
            return "too late" if time.monotonic() > expired_at else None

        first = asyncio.create_task(ex.run(req(point="pump_on", value=True), fresh))
        await asyncio.sleep(0.01)
        second = await ex.run(req(point="mode", value="manual"), stale)
        assert second == Outcome("expired", "too late")
        assert (await first).status == "ok"
        assert r.driver("boiler").values["mode"] == "auto"


async def test_device_down_and_streaming() -> None:
    flaky = SimOptions(name="flaky", interval=0.02, fail_every=1, points=1)
    async with rig([boiler()]) as r:
        await r.sup.apply([boiler(), flaky])
        await asyncio.sleep(0.1)
        ex = Executor(r.sup, LOG)
        out = await ex.run(req("poll", None, device="flaky"), fresh)
        assert out.status == "failed"
        assert "simulated failure" in (out.error or "")
        state = r.sup.state("flaky")
        assert state is not None and not state.up and state.kind == "simulated"
        assert r.sup.state("boiler") is not None


async def test_command_waits_for_a_device_still_connecting() -> None:
    from drivers.sim import SimDriver
    from gateway.driver import DriverInfo
    from gateway.metrics import Metrics
    from gateway.supervisor import Supervisor

    class SlowOpen(SimDriver):
        async def open(self) -> None:
            await asyncio.sleep(0.3)

    sup = Supervisor({"sim": DriverInfo("sim", SlowOpen)}, lambda _r: None, Metrics(), LOG)
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply([boiler(), boiler(name="never", timeout=0.2)])
        ex = Executor(sup, LOG)
        started = time.monotonic()
        assert sup.driver("boiler") is None
        out = await ex.run(req(point="pump_on", value=True), fresh)
        assert out.status == "ok"
        assert 0.25 < time.monotonic() - started < 0.6
        # a device that does not open within its timeout: failed, saying so
        out = await ex.run(req(point="pump_on", value=True, device="never"), fresh)
        assert out.status == "failed" and "not connected" in (out.error or ""), out
        await sup.stop_all()

"""What commands need of the supervisor: the running driver, poll now, device state."""

from __future__ import annotations

import asyncio
import time

import pytest

from drivers.sim import SimOptions
from gateway import logs
from gateway.errors import TransientError, WriteRefused
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.supervisor import DeviceState, Supervisor
from tests.commands.harness import DRIVERS


async def test_poll_now_is_an_extra_poll_off_schedule() -> None:
    got: list[Reading] = []
    states: list[tuple[str, DeviceState]] = []
    sup = Supervisor(DRIVERS, got.extend, Metrics(), logs.get_logger())
    sup.on_state = lambda name, st: states.append((name, st))
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply([SimOptions(name="s", interval=0.5, points=1),
                         SimOptions(name="bad", interval=0.05, fail_every=1)])
        await asyncio.sleep(0.1)  # first scheduled poll at 0 s, next at 0.5 s
        assert [r.value for r in got if r.device == "s"] == [1]
        started = time.monotonic()
        counts = await asyncio.gather(sup.poll_now("s"), sup.poll_now("s"))
        assert counts == [1, 1]  # two callers, one extra poll
        assert time.monotonic() - started < 0.1
        assert [r.value for r in got if r.device == "s"] == [1, 2]
        await asyncio.sleep(0.45)  # the schedule did not move: the 0.5 s poll came
        assert [r.value for r in got if r.device == "s"] == [1, 2, 3]
        with pytest.raises(WriteRefused, match="unknown device"):
            await sup.poll_now("ghost")
        with pytest.raises(TransientError, match="simulated failure"):
            await sup.poll_now("bad")
        assert sup.driver("s") is not None and sup.driver("ghost") is None
        await sup.stop_all()
    by_device = dict(states)
    assert by_device["s"].up and by_device["s"].kind is None
    bad = by_device["bad"]
    assert not bad.up and bad.kind == "simulated" and "simulated failure" in (bad.error or "")
    # repeated failures of the same kind are one state change, not one per failure
    assert [n for n, _ in states].count("bad") == 1
    assert abs(bad.since - time.time() * 1000) < 5000


def test_state_document() -> None:
    from gateway.supervisor import state_document

    assert state_document(DeviceState(True, 5)) == {"state": "up", "since": 5}
    assert state_document(DeviceState(False, 6, "timeout", "no answer")) == {
        "state": "down", "since": 6, "kind": "timeout", "error": "no answer"}

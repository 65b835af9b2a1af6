"""Supervisor: one bad device never stalls or kills the others; polls keep their rate."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from drivers.sim import SimDriver, SimOptions
from gateway import logs
from gateway.buffer import Buffer
from gateway.config import BufferSection
from gateway.driver import DeviceOptions, DriverInfo, PollingDriver, StreamingDriver
from gateway.errors import DeviceConfigError
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.supervisor import Supervisor


class HangOptions(DeviceOptions):
    driver: Literal["hang"] = "hang"


class HangDriver(PollingDriver):
    """A device that never answers."""

    Options = HangOptions

    async def poll(self) -> Sequence[Reading]:
        await asyncio.Event().wait()
        return []


class BoomOptions(DeviceOptions):
    driver: Literal["boom"] = "boom"


class BoomDriver(PollingDriver):
    """A driver with a bug: raises something unexpected on every poll."""

    Options = BoomOptions

    async def poll(self) -> Sequence[Reading]:
        raise ZeroDivisionError("driver bug")


class BadOpenOptions(DeviceOptions):
    driver: Literal["badopen"] = "badopen"


class BadOpenDriver(PollingDriver):
    Options = BadOpenOptions
    closed = 0

    async def open(self) -> None:
        raise DeviceConfigError("illegal address", kind="config")

    async def close(self) -> None:
        BadOpenDriver.closed += 1

    async def poll(self) -> Sequence[Reading]:
        raise AssertionError("never polled")


class StreamOptions(DeviceOptions):
    driver: Literal["stream"] = "stream"


class TickStream(StreamingDriver):
    Options = StreamOptions

    async def run(self, emit) -> None:  # type: ignore[no-untyped-def]
        n = 0
        while True:
            n += 1
            emit([Reading(self.options.name, "n", n, self.ctx.clock())])
            await asyncio.sleep(0.01)


DRIVERS = {name: DriverInfo(name, cls) for name, cls in
           (("sim", SimDriver), ("hang", HangDriver), ("boom", BoomDriver),
            ("badopen", BadOpenDriver), ("stream", TickStream))}


class Snapshot:
    """Metric samples as they were before the devices stopped (stopping removes them)."""

    def __init__(self, m: Metrics) -> None:
        self.values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in m.registry.collect() for s in family.samples}


def sample(m: Metrics | Snapshot, name: str, **labels: str) -> float:
    snap = m if isinstance(m, Snapshot) else Snapshot(m)
    return snap.values.get((name, tuple(sorted(labels.items()))), 0.0)


async def run_for(devices: list[DeviceOptions], seconds: float
                  ) -> tuple[list[Reading], Snapshot, Supervisor]:
    got: list[Reading] = []
    metrics = Metrics()
    sup = Supervisor(DRIVERS, got.extend, metrics, logs.get_logger())
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply(devices)
        await asyncio.sleep(seconds)
        snap = Snapshot(metrics)
        await sup.stop_all()
    assert not [k for k in Snapshot(metrics).values if ("device", devices[0].name) in k[1]], \
        "a stopped device's series must be removed"
    return got, snap, sup


@pytest.mark.alone  # 40 ticks in 2 s, at most 6 lost
async def test_bad_devices_do_not_disturb_a_good_one() -> None:
    devices: list[DeviceOptions] = [
        SimOptions(name="good", interval=0.05, points=2),
        HangOptions(name="hung", interval=0.05, timeout=0.2),
        BoomOptions(name="buggy", interval=0.05),
        BadOpenOptions(name="wrong-address", interval=0.05),
        StreamOptions(name="stream"),
    ]
    got, m, _ = await run_for(devices, 2.0)
    good = [r for r in got if r.device == "good"]
    polls = len(good) // 2
    assert 34 <= polls <= 41, polls  # 2.0 s / 50 ms = 40 ticks, none lost to the others
    assert [r.value for r in good[::2]] == list(range(1, polls + 1))
    assert sample(m, "parkgate_poll_errors_total", device="hung", kind="timeout") >= 2
    assert sample(m, "parkgate_poll_errors_total", device="buggy", kind="internal") >= 2
    # a device the config is wrong for retries at the maximum backoff: once in 2 s
    assert sample(m, "parkgate_poll_errors_total", device="wrong-address", kind="config") == 1
    assert BadOpenDriver.closed >= 1  # close() is called after a failed open()
    assert sample(m, "parkgate_device_up", device="good") == 1
    # the snapshot is taken just before stopping: at most one poll (2 readings) later
    assert len(good) - 2 <= sample(m, "parkgate_readings_total", device="good") <= len(good)
    assert len([r for r in got if r.device == "stream"]) > 50


@pytest.mark.alone  # ticks on a 10 ms grid
async def test_schedule_has_no_drift_and_counts_overruns() -> None:
    # 10 ms interval with a poll that sometimes takes 35 ms: ticks are skipped and counted,
    # never queued, and the schedule stays on the 10 ms grid.
    class SlowSim(SimDriver):
        async def poll(self) -> Sequence[Reading]:
            out = await super().poll()
            if self._n % 10 == 0:
                await asyncio.sleep(0.035)
            return out

    drivers = {"sim": DriverInfo("sim", SlowSim)}
    got: list[Reading] = []
    m = Metrics()
    sup = Supervisor(drivers, got.extend, m, logs.get_logger())
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply([SimOptions(name="s", interval=0.01)])
        await asyncio.sleep(1.0)
        snap = Snapshot(m)
        await sup.stop_all()
    overruns = sample(snap, "parkgate_poll_overruns_total", device="s")
    assert overruns >= 15  # ~10 slow polls, each skipping 3 ticks
    assert 60 <= len(got) + overruns <= 105


async def test_apply_restarts_only_changed_devices() -> None:
    got: list[Reading] = []
    sup = Supervisor(DRIVERS, got.extend, Metrics(), logs.get_logger())
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        first = await sup.apply([SimOptions(name="a", interval=0.02),
                                 SimOptions(name="b", interval=0.02)])
        assert first == {"started": ["a", "b"], "stopped": [], "restarted": []}
        await asyncio.sleep(0.2)
        second = await sup.apply([SimOptions(name="a", interval=0.02),
                                  SimOptions(name="b", interval=0.02, points=2),
                                  SimOptions(name="c", interval=0.02)])
        assert second == {"started": ["c"], "stopped": [], "restarted": ["b"]}
        await asyncio.sleep(0.2)
        third = await sup.apply([SimOptions(name="c", interval=0.02)])
        assert third == {"started": [], "stopped": ["a", "b"], "restarted": []}
        await sup.stop_all()
    a = [r.value for r in got if r.device == "a"]
    assert a == list(range(1, len(a) + 1))  # never restarted: one counter from 1
    b = [r.value for r in got if r.device == "b"]
    assert b.count(1) >= 2  # restarted: the counter began again


@pytest.mark.parametrize("enabled", [True, False])
async def test_disabled_devices_do_not_run(enabled: bool) -> None:
    got, _, _sup = await run_for([SimOptions(name="x", interval=0.02, enabled=enabled)], 0.1)
    assert bool(got) is enabled


async def test_polls_wait_and_count_overruns_when_sqlite_commits_slower_than_devices_produce(
        tmp_path: Path) -> None:
    """Backpressure: a device producing far faster than SQLite commits waits for the buffer.

    The sim device offers 100,000 readings/s (1,000 per 10 ms tick); each commit of 1,000
    readings is slowed to 0.2 s in the SQLite thread (a slow SD card), so SQLite takes
    ~5,000/s. The polls must wait while too many readings await a commit, and count the
    ticks they miss as overruns, instead of piling readings up in memory; and every reading
    polled is committed in the end.
    """
    buf = Buffer(BufferSection(path=tmp_path / "b.db", commit_readings=1000,
                               commit_interval=0.02),
                 chunk_max=500, metrics=Metrics(), log=logs.get_logger())
    await buf.open()
    store = buf._store
    fast_commit = store.commit

    def slow_commit(*args: Any) -> Any:
        time.sleep(0.2)  # in the SQLite thread, as fsync on a slow card would
        return fast_commit(*args)

    store.commit = slow_commit  # type: ignore[method-assign]
    polled = 0
    peak = 0

    def sink(readings: Sequence[Reading]) -> None:
        nonlocal polled, peak
        polled += len(readings)
        buf.add(readings)
        peak = max(peak, len(buf._pending))

    m = Metrics()
    sup = Supervisor(DRIVERS, sink, m, logs.get_logger(), room=buf.wait_for_room)
    async with asyncio.TaskGroup() as tg:
        commits = tg.create_task(buf.run(), name="buffer.commit")
        sup.bind(tg)
        await sup.apply([SimOptions(name="flood", interval=0.01, points=1000)])
        await asyncio.sleep(2.0)
        snap = Snapshot(m)
        await sup.stop_all()
        commits.cancel()
    # a commit cancelled on the loop still runs to its end in the SQLite thread: wait for it
    # before the next flush numbers readings from the seq that commit leaves behind
    await buf._call(lambda: None)
    store.commit = fast_commit  # type: ignore[method-assign]
    await buf.flush()
    overruns = sample(snap, "parkgate_poll_overruns_total", device="flood")
    # memory stays bounded: at most one poll beyond the high-water mark
    assert peak <= buf.high_water + 1000, (peak, buf.high_water)
    # ~200 ticks in 2 s, ~10 polls/s possible: most ticks are missed, and counted
    assert overruns >= 100, (overruns, polled)
    assert polled <= 40_000, polled  # not 200,000
    stats = await buf.stats()
    assert stats.pending == 0
    assert stats.readings == polled  # every reading polled is in SQLite
    await buf.close()


class ReplyOptions(DeviceOptions):
    driver: Literal["reply"] = "reply"


class ReplyDriver(PollingDriver):
    """Waits for each answer through `asyncio.wait_for`, as pymodbus does for every request."""

    Options = ReplyOptions
    pending: asyncio.Future[list[Reading]] | None = None

    async def poll(self) -> Sequence[Reading]:
        fut: asyncio.Future[list[Reading]] = asyncio.get_running_loop().create_future()
        ReplyDriver.pending = fut
        return await asyncio.wait_for(fut, 10)


async def test_a_stop_that_wait_for_swallows_still_stops_the_device() -> None:
    """The answer and the stop land in one loop iteration: the device still stops.

    On Python 3.11 `asyncio.wait_for` then returns the answer and drops the cancellation
    (CPython gh-86296); a supervisor that only relied on CancelledError polled on forever,
    and under load an agent with a Modbus device did not exit after SIGTERM.
    """
    got: list[Reading] = []
    sup = Supervisor({"reply": DriverInfo("reply", ReplyDriver)}, got.extend, Metrics(),
                     logs.get_logger())
    ReplyDriver.pending = None
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply([ReplyOptions(name="r", interval=0.01, timeout=30)])
        for _ in range(200):
            if ReplyDriver.pending is not None:
                break
            await asyncio.sleep(0.01)
        pending = ReplyDriver.pending
        assert pending is not None
        task = next(t for t in asyncio.all_tasks() if t.get_name() == "device[r]")
        # no await between these two: the reply and the cancellation meet in wait_for
        pending.set_result([Reading("r", "v", 1, 0)])
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3.0)
        assert task in done, "the device task kept polling after it was cancelled once"
        assert task.cancelled()
        if sys.version_info < (3, 12):  # the swallowed answer was still delivered
            assert [r.value for r in got] == [1]
        await sup.stop_all()


def test_forget_device_drops_only_that_devices_series() -> None:
    m = Metrics()
    for dev in ("a", "b"):
        m.readings.labels(device=dev).inc()
        m.device_up.labels(device=dev).set(1)
        for kind in ("timeout", "crc"):
            m.poll_errors.labels(device=dev, kind=kind).inc()
    m.forget_device("a")
    m.forget_device("never-ran")  # nothing to drop: no error
    snap = Snapshot(m)
    assert not [k for k in snap.values if ("device", "a") in k[1]]
    assert sample(snap, "parkgate_poll_errors_total", device="b", kind="crc") == 1
    assert sample(snap, "parkgate_poll_errors_total", device="b", kind="timeout") == 1
    assert sample(snap, "parkgate_device_up", device="b") == 1

"""The uplink's scheduling policy against the in-memory source: backlog and live streams,
live share, max_delay, holds of refused devices, chunks too large for one message."""

from __future__ import annotations

import json

from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.model import Reading
from gateway.uplink.dialects.parkgate import ParkgateDialect, ParkgateSession
from gateway.uplink.messages import Outgoing
from gateway.uplink.scheduler import Hold, Limits, Message, Scheduler

T0 = 1_700_000_000_000
"""The scheduler's wall clock (ms) in these tests."""


class Recording(ParkgateSession):
    """The native framing, remembering whether each message was historical."""

    historical: list[bool]

    def frame(self, device: str, items: bytes, historical: bool) -> Outgoing:
        self.historical.append(historical)
        return super().frame(device, items, historical)


def session() -> Recording:
    mqtt = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"]})
    dialect = ParkgateDialect(mqtt, GatewaySection(id="g", site="s"))
    s = Recording(dialect, "mqtt://127.0.0.1", dialect.open("mqtt://127.0.0.1", "t").credentials)
    s.historical = []
    return s


def readings(n: int, device: str, start: int = 0) -> list[Reading]:
    return [Reading(device, "m", start + i, T0 + i, "V") for i in range(n)]


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def make(src: MemorySource, *, window: int = 4, live_share: float = 0.25,
         max_readings: int = 500, max_delay: float = 1.0, max_packet: int = 128_000,
         holds: dict[str, Hold] | None = None, clock: Clock | None = None
         ) -> tuple[Scheduler, Recording]:
    s = session()
    limits = Limits(window=window, live_share=live_share, max_readings=max_readings,
                    max_delay=max_delay, max_packet=max_packet, v5=True)
    return Scheduler(src, s, limits, {} if holds is None else holds,
                     boundary=src.next_seq, clock_ms=clock or Clock()), s


def seqs(msg: Message) -> list[int]:
    return [r["seq"] for p in msg.parts for r in json.loads(p.payload)["readings"]]


async def test_backlog_goes_at_once_oldest_first_live_waits_for_max_delay() -> None:
    src = MemorySource(chunk_max=10)
    src.store(readings(30, "d1"), accepted_ms=T0 - 60_000)
    clock = Clock()
    sched, s = make(src, clock=clock)  # the backlog: seqs 1..30
    src.store(readings(5, "d2"), accepted_ms=T0)
    sched.new_data()
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.stream is sched.backlog
    assert msg.firsts == [1, 11, 21] and seqs(msg) == list(range(1, 31))
    assert msg.topic == "parkgate/s/g/d1"
    sched.started(msg)
    msg, wait = await sched.next(0.0)
    assert msg is None and 0.9 < wait <= 1.0  # live data of d2 is 0 s old: wait for more
    clock.ms += 1_100
    msg, _ = await sched.next(1.1)
    assert msg is not None and msg.stream is sched.live and msg.firsts == [31]
    assert s.historical == [True, False]


async def test_a_full_live_batch_goes_without_waiting() -> None:
    src = MemorySource(chunk_max=10)
    sched, _ = make(src, max_readings=20)
    src.store(readings(25, "d1"), accepted_ms=T0)
    sched.new_data()
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.firsts == [1, 11] and msg.readings == 20
    msg, _ = await sched.next(0.0)
    assert msg is None  # the rest (5 readings) waits for max_delay


async def test_live_data_keeps_its_share_of_the_window_during_a_backlog() -> None:
    src = MemorySource(chunk_max=10)
    src.store([r for d in ("a", "b", "c", "d", "e") for r in readings(10, d)],
              accepted_ms=T0 - 60_000)
    sched, _ = make(src, window=4, live_share=0.25)  # one live slot
    src.store(readings(10, "x") + readings(10, "y"), accepted_ms=T0 - 5_000)
    sched.new_data()
    order = []
    for _ in range(4):
        msg, _w = await sched.next(0.0)
        assert msg is not None
        sched.started(msg)
        order.append((msg.device, msg.stream is sched.live))
    assert order == [("x", True), ("a", False), ("b", False), ("c", False)]
    # while the live slot is busy the backlog goes on; once it is free, live goes first
    sched.live.inflight -= 1  # the live publish ended
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.device == "y" and msg.stream is sched.live


async def drain(sched: Scheduler, src: MemorySource, now: float,
                refuse: frozenset[str] = frozenset()) -> list[Message]:
    """Publish everything ready: PUBACK (ack) each message, except refused devices'."""
    sent = []
    while True:
        msg, _ = await sched.next(now)
        if msg is None:
            return sent
        sched.started(msg)
        sent.append(msg)
        sched.finished(msg)
        sched.settled(msg)
        if msg.device in refuse:
            sched.refused(msg, now)
        else:
            src.ack(msg.firsts)
            sched.accepted(msg.device)


async def test_a_refused_device_is_held_alone_and_its_chunks_go_once_after_the_hold() -> None:
    src = MemorySource(chunk_max=10)
    clock = Clock()
    holds: dict[str, Hold] = {}
    sched, _ = make(src, max_delay=0.0, holds=holds, clock=clock)
    src.store(readings(10, "bad") + readings(10, "good"))
    sched.new_data()
    sent = await drain(sched, src, 0.0, refuse=frozenset({"bad"}))
    assert [(m.device, m.firsts) for m in sent] == [("bad", [1]), ("good", [11])]
    hold = holds["bad"]
    assert 1.0 <= hold.until <= 2.0  # 2 s, jittered in the upper half
    # more of both arrive while "bad" is held: "good" flows, "bad" stays in the source
    src.store(readings(10, "bad", 10) + readings(10, "good", 10))
    sched.new_data()
    sent = await drain(sched, src, 0.5)
    assert [(m.device, m.firsts) for m in sent] == [("good", [31])]
    assert sched.skipped == {"bad"}
    left = sched.release_holds(0.5)
    assert left is not None and 0.5 <= left <= 1.5
    # the hold ends: every chunk of "bad" goes once, oldest first, and the hold is gone
    now = hold.until + 0.01
    assert sched.release_holds(now) is None
    sent = await drain(sched, src, now)
    assert [(m.device, m.firsts) for m in sent] == [("bad", [1, 21])]
    assert holds == {}
    assert await drain(sched, src, now) == []
    assert await src.settle() == 0


async def test_holds_outlast_the_connection() -> None:
    src = MemorySource(chunk_max=10)
    holds: dict[str, Hold] = {"bad": Hold(until=5.0)}
    src.store(readings(10, "bad") + readings(10, "good"), accepted_ms=T0 - 60_000)
    sched, _ = make(src, holds=holds)  # a new connection, "bad" still held
    sent = await drain(sched, src, 1.0)
    assert [m.device for m in sent] == ["good"]
    sched.release_holds(6.0)
    sent = await drain(sched, src, 6.0)
    assert [(m.device, m.firsts) for m in sent] == [("bad", [1])]


async def test_a_chunk_larger_than_a_message_goes_in_parts_and_too_large_readings_are_named(
        ) -> None:
    src = MemorySource(chunk_max=10)
    big = [Reading("d1", "m", i, T0 + i, "V") for i in range(9)]
    big.insert(4, Reading("d1", "m", "x" * 2000, T0, "V"))  # seq 5: fits no message
    src.store(big, accepted_ms=T0 - 60_000)
    sched, _ = make(src, max_packet=400)
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.firsts == [1] and len(msg.parts) > 1
    assert all(len(p.payload) < 400 for p in msg.parts)
    assert seqs(msg) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert msg.too_large == [5] and msg.readings == 9


async def test_a_chunk_of_only_too_large_readings_still_names_its_device_and_topic() -> None:
    src = MemorySource(chunk_max=10)
    src.store([Reading("huge", "m", "x" * 2000, T0, "V")], accepted_ms=T0 - 60_000)
    sched, _ = make(src, max_packet=400)
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.parts == [] and msg.too_large == [1]
    assert (msg.device, msg.topic, msg.readings) == ("huge", "parkgate/s/g/huge", 0)


async def test_nothing_goes_while_the_session_is_not_ready() -> None:
    src = MemorySource(chunk_max=10)
    src.store(readings(10, "d1"), accepted_ms=T0 - 60_000)
    sched, s = make(src)
    ready = [False]
    s.ready = lambda: ready[0]  # type: ignore[method-assign]  # a host that is offline
    msg, wait = await sched.next(0.0)
    assert msg is None and wait == 1.0 and src.reads == 0
    ready[0] = True
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.firsts == [1]


class Waiting(Recording):
    """A session that is not ready until told (a Sparkplug primary host offline)."""

    is_ready = False

    def ready(self) -> bool:
        return self.is_ready


async def test_nothing_goes_while_not_ready_and_what_waited_is_backlog() -> None:
    src = MemorySource(chunk_max=10)
    src.store(readings(5, "d1"), accepted_ms=T0 - 60_000)
    mqtt = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"]})
    dialect = ParkgateDialect(mqtt, GatewaySection(id="g", site="s"))
    s = Waiting(dialect, "mqtt://127.0.0.1", dialect.open("mqtt://127.0.0.1", "t").credentials)
    s.historical = []
    limits = Limits(window=4, live_share=0.25, max_readings=500, max_delay=1.0,
                    max_packet=128_000, v5=True)
    sched = Scheduler(src, s, limits, {}, boundary=src.next_seq, clock_ms=Clock())
    src.store(readings(5, "d1", 5), accepted_ms=T0)  # stored while waiting
    sched.new_data()
    msg, wait = await sched.next(0.0)
    assert msg is None and wait > 0
    s.is_ready = True
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.stream is sched.backlog and msg.firsts == [1, 6]
    assert s.historical == [True]


class Withholding(Recording):
    """A session that withholds devices (a platform refused their login)."""

    held: frozenset[str] = frozenset()

    def withheld(self) -> frozenset[str]:
        return self.held


async def test_a_withheld_device_waits_in_the_buffer_until_the_session_lets_it_go() -> None:
    src = MemorySource(chunk_max=10)
    src.store(readings(5, "refused"), accepted_ms=T0 - 60_000)
    src.store(readings(5, "ok", 5), accepted_ms=T0 - 60_000)
    mqtt = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"]})
    dialect = ParkgateDialect(mqtt, GatewaySection(id="g", site="s"))
    s = Withholding(dialect, "mqtt://127.0.0.1",
                    dialect.open("mqtt://127.0.0.1", "t").credentials)
    s.historical, s.held = [], frozenset({"refused"})
    limits = Limits(window=4, live_share=0.25, max_readings=500, max_delay=1.0,
                    max_packet=128_000, v5=True)
    sched = Scheduler(src, s, limits, {}, boundary=src.next_seq, clock_ms=Clock())
    msg, _ = await sched.next(0.0)
    assert msg is not None and msg.device == "ok"
    sched.started(msg)
    msg, _ = await sched.next(0.0)
    assert msg is None and sched.skipped == {"refused"}
    assert sched.release_holds(1.0) == 1.0  # still withheld: looked at again in a second
    msg, _ = await sched.next(1.0)
    assert msg is None
    s.held = frozenset()  # a later login succeeded
    assert sched.release_holds(2.0) is None and not sched.skipped
    msg, _ = await sched.next(2.0)
    assert msg is not None and msg.device == "refused" and msg.firsts == [1]

"""Publishing on one session: the window of QoS 1 publishes, PUBACK reason codes, refusals.

Up to `window` publishes are in flight at once; a chunk is acknowledged in the source only
after its PUBACK. A PUBACK with a failure reason code (MQTT 5: 0x87 not authorized, 0x97
quota exceeded) is a refusal: only that device is held back (gateway/uplink/scheduler.py),
its readings stay in the buffer and the other devices keep flowing.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import aiomqtt
from structlog.typing import FilteringBoundLogger

from gateway.batching import seq_ranges
from gateway.buffer.source import ChunkSource, DropSource
from gateway.metrics import Metrics
from gateway.tasks import honour_cancellation
from gateway.uplink import adapter
from gateway.uplink.messages import Outgoing
from gateway.uplink.scheduler import Message, Scheduler
from gateway.uplink.state import UplinkState


class OversizeWatch:
    """Names a message that keeps ending connections (kept across sessions).

    A broker that limits message size without saying so (MQTT 3.1.1) cuts the connection on
    the same oversized message after every reconnect.
    """

    def __init__(self, log: FilteringBoundLogger) -> None:
        self.log = log
        self.lost_with: tuple[int | None, int] = (None, 0)
        """The largest message in flight at the last connection loss, and how many losses
        in a row it was."""

    def lost(self, messages: list[Message], max_bytes: int) -> None:
        """The connection was lost with these messages unsent or in flight."""
        sizes = [(max((len(p.payload) for p in m.parts), default=0), m.firsts[0])
                 for m in messages]
        size, first = max(sizes, default=(0, None))
        streak = self.lost_with[1] + 1 if first is not None and first == self.lost_with[0] \
            else 1
        self.lost_with = (first, streak)
        if first is not None and streak % 3 == 0:
            self.log.warning("the connection was lost again while the same message was in "
                             "flight: if the broker limits message size (MQTT 3.1.1 brokers "
                             "cannot say so), set uplink.mqtt.max_message_bytes below its "
                             "size", seq=first, message_bytes=size, losses=streak,
                             max_message_bytes=max_bytes)


class Publisher:
    """One session's publishing: data from the scheduler, and single messages (`send`)."""

    def __init__(self, client: aiomqtt.Client, codes: adapter.PubackCodes, *,
                 scheduler: Scheduler, source: ChunkSource, drops: DropSource,
                 window: int, timeout: float, v5: bool, max_bytes: int, state: UplinkState,
                 metrics: Metrics, log: FilteringBoundLogger, watch: OversizeWatch) -> None:
        self.client = client
        self.codes = codes
        self.scheduler = scheduler
        self.source = source
        self.drops = drops
        self.window = window
        self.timeout = timeout
        self.v5 = v5
        self.max_bytes = max_bytes
        self.state = state
        self.metrics = metrics
        self.log = log
        self.watch = watch
        self._wake: asyncio.Future[None] | None = None

    def poke(self) -> None:
        """Look at the live stream again now (shutdown: live data stops waiting)."""
        self.scheduler.new_data()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def send(self, out: Outgoing) -> str | None:
        """Publish one message; None once delivered (QoS 1: PUBACKed), else the refusal."""
        out = self.scheduler.session.stamp(out)  # synchronous with the publish: wire order
        try:
            await self.client.publish(out.topic, out.payload, qos=out.qos, retain=out.retain,
                                      properties=adapter.properties(out, self.v5),
                                      timeout=self.timeout)
        except BaseException:
            self.codes.forget()
            raise
        return self.codes.refused()

    async def pump(self) -> None:
        """Keep up to `window` publishes in flight, backlog and live as the scheduler says."""
        sched = self.scheduler
        inflight: dict[asyncio.Task[None], Message] = {}
        failure: list[BaseException] = []
        unsent: list[Message] = []
        loop = asyncio.get_running_loop()
        # Publishes ending wake this loop through a plain future, and one task waits for the
        # source's next change across iterations, instead of two tasks created and cancelled
        # per wake-up (about 100 wake-ups a second at 100 meters, bench/modbus.py --profile).
        self._wake = loop.create_future()
        changed: asyncio.Future[Any] | None = None
        # aiomqtt 2.x never fails pending publishes when the connection drops; without this
        # the window would sit until publish_timeout (30 s) before the session ends
        disconnected = adapter.disconnected(self.client)

        def done(task: asyncio.Task[None], msg: Message) -> None:
            inflight.pop(task, None)
            sched.settled(msg)
            self.metrics.uplink_inflight.set(len(inflight))
            if not task.cancelled() and task.exception() is not None:
                failure.append(task.exception())  # type: ignore[arg-type]
                unsent.append(msg)
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)

        try:
            while True:
                honour_cancellation()  # a publish's wait_for may have swallowed a stop
                adapter.raise_if_lost(disconnected)  # the cause, before the publishes it failed
                if failure:
                    raise failure[0]
                started = False
                wait_s = 1.0
                now = loop.time()
                hold_in = sched.release_holds(now) if sched.skipped else None
                while len(inflight) < self.window:
                    msg, ready_in = await sched.next(now)
                    if msg is None:
                        wait_s = ready_in
                        break
                    sched.started(msg)
                    task = asyncio.create_task(self._publish(msg),
                                               name=f"uplink.publish[{msg.firsts[0]}]")
                    inflight[task] = msg
                    task.add_done_callback(functools.partial(done, msg=msg))
                    self.metrics.uplink_inflight.set(len(inflight))
                    started = True
                if self._wake.done():
                    self._wake = loop.create_future()
                if changed is None:
                    changed = asyncio.ensure_future(self.source.wait_new())
                waits: set[asyncio.Future[Any]] = {changed, self._wake, disconnected}
                timeout = None if started else max(0.001, wait_s)
                if hold_in is not None:
                    timeout = max(0.001, min(hold_in, timeout or hold_in))
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if changed.done():
                    changed = None
                    sched.new_data()
        except (aiomqtt.MqttError, OSError, TimeoutError):
            self.watch.lost([*unsent, *inflight.values()], self.max_bytes)
            raise
        finally:
            if changed is not None:
                changed.cancel()
            for task in list(inflight):
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            self.metrics.uplink_inflight.set(0)

    async def _publish(self, msg: Message) -> None:
        started = time.perf_counter()
        try:
            stamp = self.scheduler.session.stamp
            for part in msg.parts:  # more than one: a split chunk, or births before data
                part = stamp(part)  # noqa: PLW2901 - as it goes on the wire
                try:
                    await self.client.publish(part.topic, part.payload, qos=part.qos,
                                              retain=part.retain,
                                              properties=adapter.properties(part, self.v5),
                                              timeout=self.timeout)
                except aiomqtt.MqttError as exc:
                    self.codes.forget()
                    raise aiomqtt.MqttError(f"publish not acknowledged: {exc}") from exc
                except BaseException:
                    self.codes.forget()
                    raise
                if (refusal := self.codes.refused()) is not None:
                    self._refused(msg, refusal)  # not delivered: the chunks stay
                    return
        finally:
            self.scheduler.finished(msg)
        if msg.too_large:  # for a drop notice, durably before the ack can delete the chunk
            await self.drops.record_dropped(seq_ranges(msg.too_large), "too_large")
        # acknowledged: the source deletes these chunks (at its next commit)
        self.source.ack(msg.firsts)
        if msg.too_large:
            self._too_large(msg)
        if (hold := self.scheduler.accepted(msg.device)) is not None:
            self.log.info("broker accepts this device's publishes again",
                          device=msg.device, topic=msg.topic,
                          refusals=hold.backoff.attempts)
        self.metrics.uplink_latency.observe(time.perf_counter() - started)
        self.metrics.uplink_published.inc(msg.readings)
        self.metrics.uplink_messages.inc()
        self.state.published += msg.readings

    def _too_large(self, msg: Message) -> None:
        """Readings that no message can carry: counted and logged by seq, not retried."""
        self.metrics.buffer_dropped.labels(reason="too_large").inc(len(msg.too_large))
        self.log.error("readings too large for any message the broker accepts: dropped; "
                       "check the device's values or raise the broker's maximum packet size "
                       "(uplink.mqtt.max_message_bytes for MQTT 3.1.1 brokers)",
                       device=msg.device, topic=msg.topic, dropped=len(msg.too_large),
                       seqs=seq_ranges(msg.too_large), max_message_bytes=self.max_bytes)

    def _refused(self, msg: Message, reason: str) -> None:
        """Hold the device back; the others go on."""
        self.metrics.uplink_publish_refused.labels(reason=reason).inc()
        delay = self.scheduler.refused(msg, asyncio.get_running_loop().time())
        if delay is None:
            return
        hold = self.scheduler.holds[msg.device]
        self.state.last_error = f"{self.state.broker}: publish to {msg.topic} refused: {reason}"
        self.log.error("broker refused a publish: this device's readings stay in the buffer "
                       "and are retried later, other devices go on; check the broker's ACL "
                       "or quotas for this topic", device=msg.device, topic=msg.topic,
                       reason=reason, retry_in_s=round(delay, 1),
                       refusals=hold.backoff.attempts)

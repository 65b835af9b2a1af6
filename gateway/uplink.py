"""MQTT uplink: buffered chunks -> batched QoS 1 publishes, deleted from the buffer on PUBACK.

Brokers are tried in order; a failure moves to the next one, and after a full round the
uplink waits with capped, jittered backoff (at the cap at once when a broker refuses our
credentials). Up to `window` publishes are in flight at once.

Backlog policy: when a connection starts, the buffer's `next_seq` splits the data into a
*backlog* (accepted before, oldest first) and *live* data (accepted since). While a backlog
drains, live data may hold up to `live_share` of the window (at least one slot), so fresh
readings reach the platform within about one round trip even behind hours of old ones.
The platform therefore sees seqs out of order during a drain; it de-duplicates and sorts by
(gateway, seq) and `ts` as usual.

Refused topics: when the broker refuses a publish in its PUBACK (MQTT 5: an ACL that does
not yet list a new device, a quota), only that device is held back, with its own backoff;
its readings stay in the buffer and the other devices keep flowing. When the hold ends, the
device's skipped chunks are read again from the buffer. Holds outlast reconnects: some
brokers (AWS IoT, EMQX with `deny_action = disconnect`) drop the connection on a refused
publish, and an immediate retry would cut everyone off again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from structlog.typing import FilteringBoundLogger

from gateway import __version__
from gateway.backoff import Backoff
from gateway.buffer import Buffer, Chunk
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import now_ms
from gateway.notices import NoticeSender, notice_topic

# CONNACK codes that mean "your credentials are wrong" (3.1.1: 4, 5; MQTT 5: 0x86, 0x87).
AUTH_CODES = {4, 5, 0x86, 0x87}


@dataclass(frozen=True, slots=True)
class Broker:
    """One broker from `uplink.mqtt.brokers`."""

    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        """`mqtt://host[:port]` or `mqtts://host[:port]`."""
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname or "localhost", parts.port or (8883 if tls else 1883), tls)


STABLE_S = 10.0
"""A connection that lasted this long resets the reconnect backoff."""

HOLD_BASE = 2.0
HOLD_CAP = 300.0
"""A refused device is retried after 2, 4, 8 ... s (jittered in the upper half), at most
every 5 minutes: an ACL fix shows within minutes, a permanent refusal costs one publish per
device per 5 minutes."""

MIN_FETCH = 16
"""Chunks read from SQLite at once: twice the window, at least this many. Chunks can hold
`max_readings` readings each (~65 KB at 500), so this bounds the uplink's memory."""


@dataclass(slots=True)
class _Stream:
    """A monotonic cursor over buffered chunks in [cursor, stop), with a fetched queue.

    Within one connection a chunk is fetched once and sent once; after a reconnect new
    streams start again from the oldest unacknowledged chunk. A stream with a `device`
    re-reads only that device's chunks (after a hold).
    """

    cursor: int
    stop: int | None
    device: str | None = None
    pending: list[Chunk] = field(default_factory=list)
    inflight: int = 0
    at_end: bool = False
    """The last fetch found nothing more (live: until the buffer signals new data)."""

    @property
    def exhausted(self) -> bool:
        return self.at_end and not self.pending


@dataclass(slots=True)
class _Message:
    topic: str
    device: str
    payload: bytes
    firsts: list[int]
    readings: int
    stream: _Stream


@dataclass(slots=True)
class _Hold:
    """A device whose publishes the broker refused: skipped until `until` (loop time)."""

    # upper-half jitter: many held devices must not line up into frequent retries
    backoff: Backoff = field(
        default_factory=lambda: Backoff(base=HOLD_BASE, cap=HOLD_CAP, low=0.5))
    until: float = 0.0


@dataclass(slots=True)
class _Connection:
    """What one connection's publishing keeps about held devices.

    A chunk of a held device is dropped from its stream (it stays in the buffer) and the
    device is marked `skipped`. When the hold ends, a stream of that device alone re-reads
    the buffer below the live cursor, and the other streams leave the device's chunks below
    that point (`retry_below`) to it, so each chunk is still sent once per connection.
    """

    inflight_firsts: set[int] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    retries: dict[str, _Stream] = field(default_factory=dict)
    retry_below: dict[str, int] = field(default_factory=dict)

    def mine(self, stream: _Stream, chunk: Chunk) -> bool:
        """Whether `stream` may send `chunk` (not another stream's re-read)."""
        below = self.retry_below.get(chunk.device)
        return below is None or chunk.first >= below or stream.device == chunk.device


@dataclass(slots=True)
class UplinkState:
    """What /readyz and `STATUS=` report about the uplink."""

    connected: bool = False
    broker: str | None = None
    last_error: str | None = None
    connected_since: float | None = None
    published: int = 0
    history: list[str] = field(default_factory=list)


class _NamedTLSContext(ssl.SSLContext):
    """Checks the broker's certificate against `tls.server_name` instead of the URL's host.

    paho passes the URL's host to `wrap_socket`; this is the one place to change it.
    """

    server_name: str | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        return super().wrap_socket(*args, **kwargs)


class _LastError(logging.Handler):
    """Keeps the last warning or error paho logged (the real cause behind a timeout)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()

    def take(self) -> str | None:
        """The last message since the previous call, and forget it."""
        message, self.message = self.message, None
        return message


class _PubackCodes:
    """MQTT 5 PUBACK reason codes per publish, which aiomqtt 2.x drops.

    aiomqtt's `publish()` calls paho's `publish()` synchronously in the caller's task, then
    waits for `on_publish` and ignores its reason code, so a refused message (0x87 not
    authorized, 0x97 quota exceeded, 0x95 too large) would count as delivered and its
    readings would be deleted. These wrappers remember the mid each task published and the
    codes the broker refused, so the uplink keeps a refused batch and holds its device.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        # aiomqtt <3 exposes no PUBACK reason code: wrap its paho client (pinned <3)
        inner: Any = client._client
        self._mids: dict[asyncio.Task[Any], int] = {}
        self._refused: dict[int, str] = {}
        publish = inner.publish
        on_publish = inner.on_publish

        def publish_hook(*args: Any, **kwargs: Any) -> Any:
            info = publish(*args, **kwargs)
            task = asyncio.current_task()
            if task is not None:
                self._mids[task] = info.mid
            return info

        def on_publish_hook(c: Any, userdata: Any, mid: int, reason_code: Any,
                            properties: Any) -> None:
            if getattr(reason_code, "is_failure", False):
                self._refused[mid] = str(reason_code)
            on_publish(c, userdata, mid, reason_code, properties)

        inner.publish = publish_hook
        inner.on_publish = on_publish_hook

    def refused(self) -> str | None:
        """After `await client.publish(...)` in this task: the broker's refusal, if any."""
        task = asyncio.current_task()
        mid = self._mids.pop(task, None) if task is not None else None
        return None if mid is None else self._refused.pop(mid, None)

    def forget(self) -> None:
        """Drop what this task recorded (its publish failed or was cancelled)."""
        task = asyncio.current_task()
        if task is not None:
            mid = self._mids.pop(task, None)
            if mid is not None:
                self._refused.pop(mid, None)


def tls_context(cfg: MqttSection) -> ssl.SSLContext:
    """The TLS context for `mqtts://` brokers: verification on unless `verify: false`."""
    tls = cfg.tls
    ctx = _NamedTLSContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = tls.server_name
    if tls.ca:
        ctx.load_verify_locations(cafile=str(tls.ca))
    else:
        ctx.load_default_certs()
    if tls.cert:
        ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Uplink:
    """Owns the MQTT connection; `run()` until cancelled, `drain()` on shutdown."""

    def __init__(self, cfg: MqttSection, gateway: GatewaySection, buffer: Buffer,
                 metrics: Metrics, log: FilteringBoundLogger) -> None:
        self.cfg = cfg
        self.gw = gateway
        self.buffer = buffer
        self.metrics = metrics
        self.log = log.bind(component="uplink")
        self.brokers = [Broker.parse(u) for u in cfg.brokers]
        self.state = UplinkState()
        self.client_id = cfg.client_id or f"parkgate-{gateway.id}"
        self.status_topic = cfg.status_topic.format(site=gateway.site, gateway=gateway.id,
                                                    device="status")
        self._prefix = ('{"v":1,"gateway":' + json.dumps(gateway.id) + ',"site":'
                        + json.dumps(gateway.site) + ',"readings":[').encode()
        self._topics: dict[str, str] = {}
        self._ssl: ssl.SSLContext | None = None
        self._draining = False
        # paho reports socket-level causes (a TLS alert, a reset) only through its logger
        self._last_error = _LastError()
        self._mqtt_log = logging.getLogger(f"parkgate.mqtt.{self.client_id}")
        self._mqtt_log.addHandler(self._last_error)
        self.on_state: Callable[[UplinkState], None] | None = None
        self._holds: dict[str, _Hold] = {}
        self._notices = NoticeSender(buffer, notice_topic(cfg.topic, gateway.site, gateway.id),
                                     gateway=gateway.id, site=gateway.site, log=self.log,
                                     sent=metrics.uplink_drop_notices)

    def topic_for(self, device: str) -> str:
        """The data topic of a device."""
        topic = self._topics.get(device)
        if topic is None:
            topic = self.cfg.topic.format(site=self.gw.site, gateway=self.gw.id, device=device)
            self._topics[device] = topic
        return topic

    # -- connection --------------------------------------------------------------------------
    def _client(self, broker: Broker) -> aiomqtt.Client:
        v5 = self.cfg.protocol == "5"
        offline = json.dumps({"state": "offline", "reason": "connection lost",
                              "gateway": self.gw.id})
        tls = None
        if broker.tls:
            if self._ssl is None:
                self._ssl = tls_context(self.cfg)
            tls = self._ssl
        client = aiomqtt.Client(
            broker.host, broker.port,
            logger=self._mqtt_log,
            username=self.cfg.username,
            password=self.cfg.password.get_secret_value() if self.cfg.password else None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else True,
            will=aiomqtt.Will(self.status_topic, offline, qos=1, retain=True),
            keepalive=int(self.cfg.keepalive),
            timeout=self.cfg.connect_timeout,
            tls_context=tls,
            tls_insecure=(not self.cfg.tls.verify) if broker.tls else None,
            max_inflight_messages=self.cfg.window,
            max_queued_outgoing_messages=self.cfg.window * 2,
        )
        # a full window of publishes awaiting PUBACK is normal here, not worth a warning
        client.pending_calls_threshold = self.cfg.window * 2 + 10
        return client

    async def run(self) -> None:
        """Connect, publish, fail over and reconnect until cancelled."""
        backoff = Backoff(base=0.5, cap=self.cfg.backoff_max)
        index = 0
        failures_this_round = 0
        while True:
            broker = self.brokers[index % len(self.brokers)]
            delay: float | None = None
            self._last_error.take()  # only causes of this attempt count
            try:
                await self._session(broker)
            except asyncio.CancelledError:
                raise
            except MqttConnectError as exc:  # CONNACK refused (not a later disconnect)
                code = int(exc.rc) if isinstance(exc.rc, int) else int(getattr(exc.rc, "value", 0))
                if code in AUTH_CODES:
                    reason = "auth"
                    self.log.error("broker refused our credentials: check uplink.mqtt.username"
                                   " and password; readings stay in the buffer",
                                   broker=broker.url, code=code)
                    delay = backoff.max_out()
                else:
                    reason = "refused"
                    self.log.warning("broker refused the connection", broker=broker.url,
                                     error=str(exc))
                self._failed(broker, reason, str(exc))
            except sqlite3.DatabaseError as exc:  # the buffer's own recovery handles the file
                self.log.error("uplink could not read the buffer", error=str(exc))
                self._failed(broker, "error", f"buffer: {exc}")
            except (aiomqtt.MqttError, OSError, TimeoutError, ssl.SSLError) as exc:
                error = str(exc) or type(exc).__name__
                cause = self._last_error.take()
                if cause and cause not in error:
                    error = f"{error} ({cause})"
                # aiomqtt re-raises ssl.SSLError as a plain MqttError: classify by its text
                reason = "tls" if broker.tls and ("SSL" in error or "certificate" in error
                                                  or isinstance(exc, ssl.SSLError)) else "error"
                hint = {"tls": "check uplink.mqtt.tls (ca, cert, key, server_name)"}.get(reason)
                self.log.warning("uplink connection failed or lost", broker=broker.url,
                                 error=error, reason=reason, hint=hint)
                self._failed(broker, reason, error)
            since = self.state.connected_since
            if since is not None and delay is None and time.monotonic() - since >= STABLE_S:
                # the session had worked: a fresh round, no long wait (a broker that drops
                # us right after CONNACK, say for a refused publish, gets the backoff)
                backoff.reset()
                failures_this_round = 0
            self._set_connected(None)
            index += 1
            failures_this_round += 1
            self.metrics.uplink_reconnects.inc()
            if delay is None and failures_this_round < len(self.brokers):
                delay = 0.1  # try the next broker of the list right away
            elif delay is None:
                delay = backoff.next_delay()
                failures_this_round = 0
            await asyncio.sleep(delay)

    def _failed(self, broker: Broker, reason: str, error: str) -> None:
        self.metrics.uplink_connect_errors.labels(reason=reason).inc()
        self.state.last_error = f"{broker.url}: {error}"

    def _set_connected(self, broker: Broker | None) -> None:
        was = self.state.broker
        if was is not None:
            self.metrics.uplink_broker.labels(broker=was).set(0)
        self.state.connected = broker is not None
        self.state.broker = broker.url if broker else None
        self.state.connected_since = time.monotonic() if broker else None
        self.metrics.uplink_connected.set(1 if broker else 0)
        if broker:
            self.metrics.uplink_broker.labels(broker=broker.url).set(1)
        if self.on_state:
            self.on_state(self.state)

    async def _session(self, broker: Broker) -> None:
        client = self._client(broker)
        codes = _PubackCodes(client)
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(client)  # CONNACK refusals: MqttCodeError
            self.log.info("uplink connected", broker=broker.url,
                          protocol=self.cfg.protocol, tls=broker.tls)
            self._set_connected(broker)
            await client.publish(self.status_topic, self._status("online", broker), qos=1,
                                 retain=True, timeout=self.cfg.publish_timeout)
            if (refusal := codes.refused()) is not None:
                self.log.warning("broker refused the status message", reason=refusal)
            # drop notices go beside the data, on their own task (gateway/notices.py)
            notices = asyncio.create_task(
                self._notices.run(functools.partial(self._publish_notice, client, codes)),
                name="uplink.notices")
            try:
                await self._pump(client, codes)
            finally:
                notices.cancel()
                await asyncio.gather(notices, return_exceptions=True)
                if self._draining:
                    with contextlib.suppress(Exception):
                        await client.publish(self.status_topic,
                                             self._status("offline", broker, "shutdown"),
                                             qos=1, retain=True, timeout=2.0)

    def _status(self, state: str, broker: Broker, reason: str | None = None) -> bytes:
        doc: dict[str, Any] = {"state": state, "gateway": self.gw.id, "site": self.gw.site,
                               "version": __version__, "ts": now_ms(), "broker": broker.url}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc).encode()

    # -- publishing --------------------------------------------------------------------------
    async def _pump(self, client: aiomqtt.Client, codes: _PubackCodes) -> None:
        """Keep up to `window` publishes in flight, backlog and live as the policy says."""
        buffer = self.buffer
        boundary = buffer.next_seq
        await buffer.flush()  # apply acks of the last connection before reading again
        backlog = _Stream(cursor=0, stop=boundary)
        live = _Stream(cursor=boundary, stop=None)
        conn = _Connection()
        window = self.cfg.window
        live_slots = max(1, int(window * self.cfg.live_share))
        inflight: set[asyncio.Task[None]] = set()
        failure: list[BaseException] = []
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        # aiomqtt 2.x never fails pending publishes when the connection drops; without this
        # the window would sit until publish_timeout (30 s) before the session ends
        disconnected: asyncio.Future[None] = client._disconnected

        def done(task: asyncio.Task[None], msg: _Message) -> None:
            inflight.discard(task)
            conn.inflight_firsts.difference_update(msg.firsts)
            self.metrics.uplink_inflight.set(len(inflight))
            if not task.cancelled() and task.exception() is not None:
                failure.append(task.exception())  # type: ignore[arg-type]
            wake.set()

        try:
            while True:
                if failure:
                    raise failure[0]
                if disconnected.done():
                    raise aiomqtt.MqttError("connection lost")
                started = False
                wait_s = 1.0
                hold_in = self._release_holds(conn, live, loop.time()) if conn.skipped else None
                while len(inflight) < window:
                    msg = None
                    for stream in self._order(backlog, live, conn, live_slots):
                        msg, ready_in = await self._next_message(stream, conn)
                        wait_s = min(wait_s, ready_in)
                        if msg is not None:
                            break
                    if msg is None:
                        break
                    msg.stream.inflight += 1
                    conn.inflight_firsts.update(msg.firsts)
                    task = asyncio.create_task(self._publish(client, codes, msg, conn),
                                               name=f"uplink.publish[{msg.firsts[0]}]")
                    inflight.add(task)
                    task.add_done_callback(functools.partial(done, msg=msg))
                    self.metrics.uplink_inflight.set(len(inflight))
                    started = True
                wake.clear()
                changed = asyncio.ensure_future(buffer.changed.wait())
                woken = asyncio.ensure_future(wake.wait())
                waits: set[asyncio.Future[Any]] = {changed, woken, disconnected}
                timeout = None if started else max(0.001, wait_s)
                if hold_in is not None:
                    timeout = max(0.001, min(hold_in, timeout or hold_in))
                try:
                    await asyncio.wait(waits, timeout=timeout,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    woken.cancel()
                if buffer.changed.is_set():
                    buffer.changed.clear()
                    live.at_end = False
        finally:
            for task in list(inflight):
                task.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)
            self.metrics.uplink_inflight.set(0)

    @staticmethod
    def _order(backlog: _Stream, live: _Stream, conn: _Connection, live_slots: int
               ) -> list[_Stream]:
        """Which stream may fill the next window slot, in order of preference."""
        older = [backlog] if not backlog.exhausted else []
        if conn.retries:
            for device, stream in list(conn.retries.items()):
                if stream.exhausted:
                    del conn.retries[device]
                else:
                    older.append(stream)
        if not older:
            return [live]
        if live.inflight < live_slots:
            return [live, *older]
        return older

    def _held(self, device: str, now: float) -> bool:
        hold = self._holds.get(device)
        return hold is not None and now < hold.until

    def _release_holds(self, conn: _Connection, live: _Stream, now: float) -> float | None:
        """Re-read the chunks of devices whose hold ended; seconds until the next one ends."""
        next_in: float | None = None
        for device in list(conn.skipped):
            hold = self._holds.get(device)
            if hold is not None and now < hold.until:
                left = hold.until - now
                next_in = left if next_in is None else min(next_in, left)
                continue
            conn.skipped.discard(device)
            # the live stream delivers the device's chunks from its cursor on
            conn.retries[device] = _Stream(cursor=0, stop=live.cursor, device=device)
            conn.retry_below[device] = live.cursor
        return next_in

    async def _next_message(self, stream: _Stream, conn: _Connection
                            ) -> tuple[_Message | None, float]:
        """The next ready message of a stream, or None and how long until one may be ready."""
        fetch = max(MIN_FETCH, 2 * self.cfg.window)
        now = asyncio.get_running_loop().time()
        while True:
            if len(stream.pending) < fetch // 2 and not stream.at_end:
                chunks = await self.buffer.fetch(stream.cursor, stream.stop, fetch,
                                                 stream.device)
                if chunks:
                    stream.pending.extend(chunks)
                    stream.cursor = chunks[-1].last + 1
                stream.at_end = len(chunks) < fetch
                if stream.device is not None and chunks:
                    # a re-read meets chunks sent before the hold: awaiting their PUBACK or
                    # acknowledged but not yet deleted; neither goes twice
                    sent = conn.inflight_firsts | self.buffer.unflushed_acks()
                    stream.pending[:] = [c for c in stream.pending if c.first not in sent]
            pending = stream.pending
            skip = 0
            if self._holds or conn.retry_below:
                while skip < len(pending):
                    c = pending[skip]
                    if self._held(c.device, now):
                        conn.skipped.add(c.device)  # stays in the buffer for a re-read
                    elif conn.mine(stream, c):
                        break
                    skip += 1
            if not skip:
                break
            del pending[:skip]
        if not pending:
            return None, 1.0
        max_readings = self.cfg.batch.max_readings
        first = pending[0]
        taken = [0]
        total = first.count
        for i in range(1, len(pending)):
            c = pending[i]
            if c.device != first.device:
                continue
            if total + c.count > max_readings:
                break
            taken.append(i)
            total += c.count
        if stream.stop is None and total < max_readings and not self._draining:
            age = (now_ms() - first.accepted_ms) / 1000
            # a negative age means the wall clock stepped back: send rather than wait on it
            if 0 <= age < self.cfg.batch.max_delay:
                return None, self.cfg.batch.max_delay - age
        if len(taken) == len(pending) or taken[-1] == len(taken) - 1:
            picked = pending[:len(taken)]
            del pending[:len(taken)]
        else:
            chosen = set(taken)
            picked = [pending[i] for i in taken]
            stream.pending = [c for i, c in enumerate(pending) if i not in chosen]
        return self._message(picked, stream), 0.0

    def _message(self, chunks: list[Chunk], stream: _Stream) -> _Message:
        body = ",".join(c.body for c in chunks).encode()
        return _Message(topic=self.topic_for(chunks[0].device), device=chunks[0].device,
                        payload=self._prefix + body + b"]}",
                        firsts=[c.first for c in chunks],
                        readings=sum(c.count for c in chunks), stream=stream)

    async def _publish(self, client: aiomqtt.Client, codes: _PubackCodes, msg: _Message,
                       conn: _Connection) -> None:
        started = time.perf_counter()
        try:
            await client.publish(msg.topic, msg.payload, qos=1,
                                 timeout=self.cfg.publish_timeout)
        except aiomqtt.MqttError as exc:
            codes.forget()
            raise aiomqtt.MqttError(f"publish not acknowledged: {exc}") from exc
        except BaseException:
            codes.forget()
            raise
        finally:
            msg.stream.inflight -= 1
        if (refusal := codes.refused()) is not None:
            self._refused(msg, refusal, conn)  # not delivered: the chunks stay buffered
            return
        # acknowledged: the buffer deletes these chunks at its next commit
        self.buffer.ack(msg.firsts)
        if self._holds and (hold := self._holds.pop(msg.device, None)) is not None:
            self.log.info("broker accepts this device's publishes again",
                          device=msg.device, topic=msg.topic,
                          refusals=hold.backoff.attempts)
        self.metrics.uplink_latency.observe(time.perf_counter() - started)
        self.metrics.uplink_published.inc(msg.readings)
        self.metrics.uplink_messages.inc()
        self.state.published += msg.readings

    async def _publish_notice(self, client: aiomqtt.Client, codes: _PubackCodes, topic: str,
                              payload: bytes) -> str | None:
        """Publish a drop notice QoS 1; None once acknowledged, else the broker's refusal."""
        try:
            await client.publish(topic, payload, qos=1, timeout=self.cfg.publish_timeout)
        except BaseException:
            codes.forget()
            raise
        return codes.refused()

    def _refused(self, msg: _Message, reason: str, conn: _Connection) -> None:
        """Hold the device back; the others go on."""
        self.metrics.uplink_publish_refused.labels(reason=reason).inc()
        conn.skipped.add(msg.device)
        now = asyncio.get_running_loop().time()
        hold = self._holds.setdefault(msg.device, _Hold())
        if now < hold.until:
            return  # another message sent before the hold began: held already
        delay = hold.backoff.next_delay()
        hold.until = now + delay
        self.state.last_error = f"{self.state.broker}: publish to {msg.topic} refused: {reason}"
        self.log.error("broker refused a publish: this device's readings stay in the buffer "
                       "and are retried later, other devices go on; check the broker's ACL "
                       "or quotas for this topic", device=msg.device, topic=msg.topic,
                       reason=reason, retry_in_s=round(delay, 1),
                       refusals=hold.backoff.attempts)

    async def drain(self, grace: float) -> bool:
        """On shutdown: keep publishing what is buffered for up to `grace` seconds.

        Live data no longer waits for `max_delay`. Returns True when the buffer is empty.
        """
        self._draining = True
        self.buffer.changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            await self.buffer.flush()  # deletes chunks acknowledged meanwhile
            stats = await self.buffer.stats()
            if stats.readings == 0 and stats.pending == 0:
                return True
            if self._holds and stats.pending == 0 and stats.readings \
                    and not await self.buffer.readings_outside(list(self._holds)):
                # only what the broker refuses is left: waiting out the grace cannot help
                self.log.warning("unsent readings of devices the broker refuses stay buffered",
                                 devices=sorted(self._holds), readings=stats.readings)
                return False
            if loop.time() >= deadline:
                self.log.warning("shutdown grace period over; unsent readings stay buffered",
                                 readings=stats.readings)
                return False
            await asyncio.sleep(0.05)



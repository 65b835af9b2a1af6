"""MQTT uplink: buffered chunks -> batched QoS 1 publishes, deleted from the buffer on PUBACK.

Brokers are tried in order; a failure moves to the next one. Up to `window` publishes are
in flight at once.

Reconnecting: after a full round failed, the uplink asks the cheapest question first: does
any broker accept a TCP connection (a probe, closed at once, nothing sent)?
- Yes, at once: the broker was up all along and what failed was TLS, MQTT or the session
  (a broker busy after a restart, a CONNACK "server unavailable", a drop after a refused
  publish). The full handshake costs the broker real work, so it waits a capped backoff
  with full jitter that grows with each such failure (0.5, 1, 2 ... `backoff_max` s).
  Refused credentials jump to `backoff_max` at once and skip the probe.
- No: the broker is gone (an outage). The uplink probes at a short jittered interval that
  grows with the outage's length, not with the number of probes (`ProbePacing`: 0.5 s at
  first, 0.75 s after a minute, 3 s after ten, `backoff_max` after about an hour), and
  connects as soon as a probe is accepted. Data flows again within about that interval
  plus one handshake: under a second for outages up to a minute.

What a fleet does to a broker cluster that comes back: while it is down, each gateway
sends about two SYNs a second that the kernel answers with a RST; no TLS, no session, no
log line on the broker. The first probe after a loss is fully jittered and later ones are
jittered in the upper half, so after a few seconds the gateways' probe phases are
independent: when the listener opens, connects arrive spread evenly over one probe
interval (0.5-0.75 s for outages up to a minute, wider after longer ones) instead of at
the same instants, as with a backoff schedule without jitter, or over 15 s, as with full
jitter up to `backoff_max` (bench/fleet_reconnect.py). The spread cannot be much wider
and still meet "data within a second". A broker that cannot take that rate refuses or
times out handshakes, and each gateway whose handshake fails after a successful probe
falls back to the exponential backoff, so the fleet spreads out further while the broker
struggles. The price: a load balancer that accepts TCP while its brokers are down makes
every probe succeed, and the uplink is back to the exponential backoff alone.

Backlog policy: when a connection starts, the buffer's `next_seq` splits the data into a
*backlog* (accepted before, oldest first) and *live* data (accepted since). While a backlog
drains, live data may hold up to `live_share` of the window (at least one slot), so fresh
readings reach the platform within about one round trip even behind hours of old ones.
The platform therefore sees seqs out of order during a drain; it de-duplicates and sorts by
(gateway, seq) and `ts` as usual.

Message size: a batch never exceeds the broker's Maximum Packet Size (MQTT 5 CONNACK) or
`max_message_bytes` (3.1.1 brokers cannot say theirs): batches of several chunks stop
short of it, a larger chunk goes in parts (acknowledged in the buffer when every part is),
and a reading that cannot fit on its own is dropped and counted, never retried: a broker
that cuts off an oversized publish would otherwise get the same one after every reconnect.

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
from gateway.batching import max_payload, pack, seq_ranges, split_items
from gateway.buffer import Buffer, Chunk
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import now_ms
from gateway.notices import NoticeSender, notice_topic
from gateway.reconnect import PROBE_TIMEOUT, STABLE_S, Reconnect
from gateway.session import (
    QuickLosses,
    default_client_id,
    disconnect_code,
    install_suffix,
    taken_over,
)

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
    """Chunks of one device going out together: one payload, or the parts of one chunk
    too large for a message (acknowledged in the buffer once every part is)."""

    topic: str
    device: str
    payloads: list[bytes]
    firsts: list[int]
    readings: int
    stream: _Stream
    too_large: list[int] = field(default_factory=list)
    """Seqs of readings larger than any message may be: dropped when the chunk is acked."""


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


class SessionTakenOver(aiomqtt.MqttError):
    """The broker disconnected us because another client connected with our client id."""


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


class _Connack:
    """The broker's Maximum Packet Size from an MQTT 5 CONNACK, which aiomqtt 2.x drops."""

    def __init__(self, client: aiomqtt.Client) -> None:
        # aiomqtt <3 exposes no CONNACK properties: wrap its paho client (pinned <3)
        inner: Any = client._client
        self.max_packet: int | None = None
        on_connect = inner.on_connect

        def on_connect_hook(c: Any, userdata: Any, flags: Any, reason_code: Any,
                            properties: Any = None) -> None:
            size = getattr(properties, "MaximumPacketSize", None)
            self.max_packet = int(size) if size else None
            on_connect(c, userdata, flags, reason_code, properties)

        inner.on_connect = on_connect_hook


def _disconnection(client: aiomqtt.Client) -> BaseException | None:
    """Why aiomqtt's connection ended, if it did; marks the error retrieved.

    aiomqtt 2.x sets an exception on a future nobody awaits once the session is over;
    asyncio would log it as "Future exception was never retrieved" on every disconnect.
    """
    # aiomqtt <3 keeps the disconnection only on this private future (pinned <3)
    future: asyncio.Future[None] = client._disconnected
    if future.done() and not future.cancelled():
        return future.exception()
    return None


def _utf8_len(text: str) -> int:
    """Bytes of `text` in UTF-8; without encoding it when it is ASCII (nearly always)."""
    return len(text) if text.isascii() else len(text.encode())


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
        self.client_id = cfg.client_id or ""
        """`uplink.mqtt.client_id`, else `default_client_id()` (resolved when run starts)."""
        self.status_topic = cfg.status_topic.format(site=gateway.site, gateway=gateway.id,
                                                    device="status")
        self._prefix = ('{"v":1,"gateway":' + json.dumps(gateway.id) + ',"site":'
                        + json.dumps(gateway.site) + ',"readings":[').encode()
        self._topics: dict[str, str] = {}
        self._ssl: ssl.SSLContext | None = None
        self._draining = False
        # paho reports socket-level causes (a TLS alert, a reset) only through its logger
        self._last_error = _LastError()
        self._mqtt_log = logging.getLogger(f"parkgate.mqtt.{gateway.id}")
        self._mqtt_log.addHandler(self._last_error)
        self.on_state: Callable[[UplinkState], None] | None = None
        self._holds: dict[str, _Hold] = {}
        self.notice_topic = notice_topic(cfg.topic, gateway.site, gateway.id)
        self._max_bytes = cfg.max_message_bytes
        """The largest PUBLISH packet of this connection (config or the broker's CONNACK)."""
        self._quick_losses = QuickLosses()
        self._lost_with: tuple[int | None, int] = (None, 0)
        """The largest message in flight at the last connection loss, and how many losses
        in a row it was."""

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
        """Connect, publish, fail over and reconnect until cancelled (policy: module doc)."""
        if not self.client_id:
            suffix = install_suffix(self.buffer.cfg.path)
            if suffix is None:
                self.log.warning("cannot keep a per-install client id suffix next to the "
                                 "buffer; two gateways with the same gateway.id would take "
                                 "each other's MQTT session: set uplink.mqtt.client_id",
                                 path=str(self.buffer.cfg.path))
            self.client_id = default_client_id(self.gw.site, self.gw.id, suffix)
        reconnect = Reconnect(cap=self.cfg.backoff_max,
                              probe_limit_s=min(PROBE_TIMEOUT, self.cfg.connect_timeout))
        targets = [(b.host, b.port) for b in self.brokers]
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
                    delay = reconnect.refused_credentials()
                else:
                    reason = "refused"
                    self.log.warning("broker refused the connection", broker=broker.url,
                                     error=str(exc))
                self._failed(broker, reason, str(exc))
            except SessionTakenOver as exc:
                self._taken_over(broker, str(exc), "reason_code")
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
                self._lost_soon(broker)
            if reconnect.ended(self.state.connected_since, time.monotonic()):
                failures_this_round = 0  # the session had worked: a fresh round
            self._set_connected(None)
            index += 1
            failures_this_round += 1
            self.metrics.uplink_reconnects.inc()
            if delay is None and failures_this_round < len(self.brokers):
                delay = 0.1  # try the next broker of the list right away
            if delay is not None:
                await asyncio.sleep(delay)
                continue
            failures_this_round = 0
            index = await reconnect.wait(targets, self.log, self._unreachable)

    def _unreachable(self) -> None:
        """A round of probes that no broker accepted: failed connection attempts, as before
        probing, when the uplink tried the full handshake instead."""
        self.metrics.uplink_reconnects.inc()
        self.metrics.uplink_connect_errors.labels(reason="error").inc()

    def _taken_over(self, broker: Broker, error: str, evidence: str) -> None:
        self.metrics.uplink_session_takeovers.labels(evidence=evidence).inc()
        self.log.error("MQTT session taken over: another client connected with our client "
                       "id, the broker disconnected us; two gateways with the same gateway.id "
                       "or client_id? Each must have its own", broker=broker.url,
                       client_id=self.client_id, evidence=evidence, error=error)
        self._failed(broker, "takeover", error)

    def _lost_soon(self, broker: Broker) -> None:
        """MQTT 3.1.1 has no reason code: suspect a takeover from losses right after CONNACK."""
        since = self.state.connected_since
        if since is not None and self._quick_losses.lost(time.monotonic() - since, STABLE_S):
            self.metrics.uplink_session_takeovers.labels(evidence="quick_losses").inc()
            self.log.warning("MQTT session lost again and again right after connecting: "
                             "another client may use our client id (two gateways with the "
                             "same gateway.id or client_id?), or the broker drops us for "
                             "what we publish", broker=broker.url, client_id=self.client_id,
                             losses=self._quick_losses.streak)

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
        connack = _Connack(client)
        try:
            await self._connected(client, codes, connack, broker)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            if isinstance(exc, MqttConnectError):
                raise
            lost = _disconnection(client)
            if taken_over(lost):
                raise SessionTakenOver(f"session taken over ({lost})") from exc
            raise
        finally:
            _disconnection(client)  # retrieved: no "Future exception was never retrieved"

    async def _connected(self, client: aiomqtt.Client, codes: _PubackCodes, connack: _Connack,
                         broker: Broker) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(client)  # CONNACK refusals: MqttCodeError
            self._max_bytes = min(self.cfg.max_message_bytes,
                                  connack.max_packet or self.cfg.max_message_bytes)
            self.log.info("uplink connected", broker=broker.url,
                          protocol=self.cfg.protocol, tls=broker.tls,
                          max_message_bytes=self._max_bytes, client_id=self.client_id)
            self._set_connected(broker)
            await client.publish(self.status_topic, self._status("online", broker), qos=1,
                                 retain=True, timeout=self.cfg.publish_timeout)
            if (refusal := codes.refused()) is not None:
                self.log.warning("broker refused the status message", reason=refusal)
            # drop notices go beside the data, on their own task (gateway/notices.py)
            sender = NoticeSender(self.buffer, self.notice_topic, gateway=self.gw.id,
                                  site=self.gw.site, log=self.log,
                                  sent=self.metrics.uplink_drop_notices)
            notices = asyncio.create_task(
                sender.run(functools.partial(self._publish_notice, client, codes)),
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
        inflight: dict[asyncio.Task[None], _Message] = {}
        failure: list[BaseException] = []
        unsent: list[_Message] = []
        loop = asyncio.get_running_loop()
        # Publishes ending wake this loop through a plain future, and one task waits for the
        # buffer's next change across iterations, instead of two tasks created and cancelled
        # per wake-up (about 100 wake-ups a second at 100 meters, bench/modbus.py --profile).
        wake: list[asyncio.Future[None]] = [loop.create_future()]
        changed: asyncio.Future[Any] | None = None
        # aiomqtt 2.x never fails pending publishes when the connection drops; without this
        # the window would sit until publish_timeout (30 s) before the session ends
        disconnected: asyncio.Future[None] = client._disconnected

        def done(task: asyncio.Task[None], msg: _Message) -> None:
            inflight.pop(task, None)
            conn.inflight_firsts.difference_update(msg.firsts)
            self.metrics.uplink_inflight.set(len(inflight))
            if not task.cancelled() and task.exception() is not None:
                failure.append(task.exception())  # type: ignore[arg-type]
                unsent.append(msg)
            if not wake[0].done():
                wake[0].set_result(None)

        try:
            while True:
                if disconnected.done():  # the cause, before the publishes it failed
                    lost = disconnected.exception() if not disconnected.cancelled() else None
                    code = disconnect_code(lost)
                    raise aiomqtt.MqttError("connection lost" if lost is None or not code
                                            else f"connection lost: {lost}")
                if failure:
                    raise failure[0]
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
                    inflight[task] = msg
                    task.add_done_callback(functools.partial(done, msg=msg))
                    self.metrics.uplink_inflight.set(len(inflight))
                    started = True
                if wake[0].done():
                    wake[0] = loop.create_future()
                if changed is None or changed.done():
                    changed = asyncio.ensure_future(buffer.changed.wait())
                waits: set[asyncio.Future[Any]] = {changed, wake[0], disconnected}
                timeout = None if started else max(0.001, wait_s)
                if hold_in is not None:
                    timeout = max(0.001, min(hold_in, timeout or hold_in))
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if buffer.changed.is_set():
                    buffer.changed.clear()
                    live.at_end = False
        except (aiomqtt.MqttError, OSError, TimeoutError):
            self._lost_while_sending([*unsent, *inflight.values()])
            raise
        finally:
            if changed is not None:
                changed.cancel()
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
        budget = self._budget(first.device)
        size = _utf8_len(first.body)
        if size > budget:
            del pending[0]
            return self._split(first, budget, stream), 0.0
        taken = [0]
        total = first.count
        full = False
        for i in range(1, len(pending)):
            c = pending[i]
            if c.device != first.device:
                continue
            if total + c.count > max_readings:
                full = True
                break
            nbytes = _utf8_len(c.body)
            if size + 1 + nbytes > budget:
                full = True
                break
            taken.append(i)
            total += c.count
            size += 1 + nbytes
        if stream.stop is None and total < max_readings and not full and not self._draining:
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

    def _budget(self, device: str) -> int:
        """Bytes of readings (JSON items and commas) one message of `device` may carry."""
        return (max_payload(self._max_bytes, self.topic_for(device), self.cfg.protocol == "5")
                - len(self._prefix) - len(b"]}"))

    def _message(self, chunks: list[Chunk], stream: _Stream) -> _Message:
        body = ",".join(c.body for c in chunks).encode()
        return _Message(topic=self.topic_for(chunks[0].device), device=chunks[0].device,
                        payloads=[self._prefix + body + b"]}"],
                        firsts=[c.first for c in chunks],
                        readings=sum(c.count for c in chunks), stream=stream)

    def _split(self, chunk: Chunk, budget: int, stream: _Stream) -> _Message:
        """One chunk larger than a message: its readings in parts that fit; a reading
        that cannot fit on its own is left out (and dropped once the parts are acked)."""
        items = [i.encode() for i in split_items(chunk.body)]
        packed = pack([len(i) for i in items], budget)
        payloads = [self._prefix + b",".join(items[i] for i in part) + b"]}"
                    for part in packed.parts]
        return _Message(topic=self.topic_for(chunk.device), device=chunk.device,
                        payloads=payloads, firsts=[chunk.first],
                        readings=sum(len(part) for part in packed.parts), stream=stream,
                        too_large=[chunk.first + i for i in packed.too_large])

    async def _publish(self, client: aiomqtt.Client, codes: _PubackCodes, msg: _Message,
                       conn: _Connection) -> None:
        started = time.perf_counter()
        try:
            for payload in msg.payloads:  # more than one: the parts of a split chunk
                try:
                    await client.publish(msg.topic, payload, qos=1,
                                         timeout=self.cfg.publish_timeout)
                except aiomqtt.MqttError as exc:
                    codes.forget()
                    raise aiomqtt.MqttError(f"publish not acknowledged: {exc}") from exc
                except BaseException:
                    codes.forget()
                    raise
                if (refusal := codes.refused()) is not None:
                    self._refused(msg, refusal, conn)  # not delivered: the chunks stay
                    return
        finally:
            msg.stream.inflight -= 1
        if msg.too_large:  # for a drop notice, durably before the ack can delete the chunk
            await self.buffer.record_dropped(seq_ranges(msg.too_large), "too_large")
        # acknowledged: the buffer deletes these chunks at its next commit
        self.buffer.ack(msg.firsts)
        if msg.too_large:
            self._too_large(msg)
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

    def _lost_while_sending(self, messages: list[_Message]) -> None:
        """A broker that limits message size without saying so (MQTT 3.1.1) cuts the
        connection on the same oversized message after every reconnect: name it."""
        sizes = [(max(map(len, m.payloads), default=0), m.firsts[0]) for m in messages]
        size, first = max(sizes, default=(0, None))
        streak = self._lost_with[1] + 1 if first is not None and first == self._lost_with[0] \
            else 1
        self._lost_with = (first, streak)
        if first is not None and streak % 3 == 0:
            self.log.warning("the connection was lost again while the same message was in "
                             "flight: if the broker limits message size (MQTT 3.1.1 brokers "
                             "cannot say so), set uplink.mqtt.max_message_bytes below its "
                             "size", seq=first, message_bytes=size, losses=streak,
                             max_message_bytes=self._max_bytes)

    def _too_large(self, msg: _Message) -> None:
        """Readings that no message can carry: counted and logged by seq, not retried."""
        self.metrics.buffer_dropped.labels(reason="too_large").inc(len(msg.too_large))
        self.log.error("readings too large for any message the broker accepts: dropped; "
                       "check the device's values or raise the broker's maximum packet size "
                       "(uplink.mqtt.max_message_bytes for MQTT 3.1.1 brokers)",
                       device=msg.device, topic=msg.topic, dropped=len(msg.too_large),
                       seqs=seq_ranges(msg.too_large), max_message_bytes=self._max_bytes)

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



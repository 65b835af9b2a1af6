"""The uplink: connect, fail over, back off, announce; publishing is gateway/uplink/publisher.py.

Brokers are tried in order; a failure moves to the next one.

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

On every connect, in this order: subscribe to the dialect's subscriptions, publish its
announcements (status online, births), the retained states, then data and drop notices.
Holds of refused devices outlast reconnects: some brokers (AWS IoT, EMQX with
`deny_action = disconnect`) drop the connection on a refused publish, and an immediate
retry would cut everyone off again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from structlog.typing import FilteringBoundLogger

from gateway.buffer.source import ChunkSource, DropSource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.notices import NoticeSender
from gateway.reconnect import PROBE_TIMEOUT, STABLE_S, Reconnect
from gateway.session import QuickLosses, default_client_id, install_suffix, taken_over
from gateway.tasks import honour_cancellation
from gateway.uplink import adapter, dialects
from gateway.uplink.brokers import AUTH_CODES, Broker, LastError, tls_context
from gateway.uplink.client import mqtt_client
from gateway.uplink.dialect import Dialect, DialectSession
from gateway.uplink.exchange import Handler, Inbound, RetainedStates
from gateway.uplink.messages import Outgoing
from gateway.uplink.publisher import OversizeWatch, Publisher
from gateway.uplink.scheduler import NOT_READY_S, Hold, Limits, Scheduler
from gateway.uplink.state import UplinkState


class SessionTakenOver(aiomqtt.MqttError):
    """The broker disconnected us because another client connected with our client id."""


class Uplink:
    """Owns the MQTT connection; `run()` until cancelled, `drain()` on shutdown."""

    def __init__(self, cfg: MqttSection, gateway: GatewaySection, source: ChunkSource,
                 metrics: Metrics, log: FilteringBoundLogger, *, drops: DropSource,
                 state_path: Path, dialect: Dialect | None = None,
                 session_expiry: int = 0) -> None:
        self.cfg = cfg
        self.gw = gateway
        self.source = source
        self.drops = drops
        self.state_path = state_path
        """Where the per-install client id suffix is kept (beside the buffer)."""
        self.metrics = metrics
        self.log = log.bind(component="uplink")
        self.dialect = dialect or dialects.load(cfg, gateway, state_path)
        self.session_expiry = session_expiry
        """Seconds the broker keeps our session (subscriptions, queued requests) while we
        are away; 0: a clean session on every connect. Commands ask for one (unless the
        dialect's credentials ask for a clean session)."""
        self.brokers = [Broker.parse(u) for u in cfg.brokers]
        self.state = UplinkState()
        self.client_id = cfg.client_id or ""
        """`uplink.mqtt.client_id`, else `default_client_id()` (resolved when run starts)."""
        self._ssl: ssl.SSLContext | None = None
        self._draining = False
        # paho reports socket-level causes (a TLS alert, a reset) only through its logger
        self._last_error = LastError()
        self._mqtt_log = logging.getLogger(f"parkgate.mqtt.{gateway.id}")
        self._mqtt_log.addHandler(self._last_error)
        self.on_state: Callable[[UplinkState], None] | None = None
        self._holds: dict[str, Hold] = {}
        self._max_bytes = cfg.max_message_bytes
        """The largest PUBLISH packet of this connection (config or the broker's CONNACK)."""
        self._quick_losses = QuickLosses()
        self._watch = OversizeWatch(self.log)
        self._publisher: Publisher | None = None
        self._inbound = Inbound(self.log)
        self._retained = RetainedStates(self.log)

    # -- the API above the uplink (commands, device state) ----------------------------------
    def set_inbound(self, handler: Handler | None) -> None:
        """Every message on the dialect's subscriptions goes to `handler`, one at a time,
        through a queue of `INBOUND_QUEUE` (newer messages are dropped when it is full)."""
        self._inbound.handler = handler

    async def send(self, out: Outgoing) -> str | None:
        """Publish now on the current session (replies); not durable, not retried.

        None once delivered (QoS 1: PUBACKed), else why not: not connected, the broker's
        refusal, or the publish failure.
        """
        publisher = self._publisher
        if publisher is None:
            return "not connected"
        try:
            return await publisher.send(out)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__

    def set_retained_state(self, key: str, out: Outgoing) -> None:
        """The latest message under `key`, published retained when it changes and again
        after every reconnect (per-device state)."""
        self._retained.set(key, out)

    # -- connection --------------------------------------------------------------------------
    def _client(self, broker: Broker, session: DialectSession) -> aiomqtt.Client:
        if broker.tls and self._ssl is None:
            self._ssl = tls_context(self.cfg)
        return mqtt_client(self.cfg, broker, session, tls=self._ssl if broker.tls else None,
                           logger=self._mqtt_log, session_expiry=self.session_expiry)

    async def run(self) -> None:
        """Connect, publish, fail over and reconnect until cancelled (policy: module doc)."""
        if not self.client_id:
            suffix = install_suffix(self.state_path)
            if suffix is None:
                self.log.warning("cannot keep a per-install client id suffix next to the "
                                 "buffer; two gateways with the same gateway.id would take "
                                 "each other's MQTT session: set uplink.mqtt.client_id",
                                 path=str(self.state_path))
            self.client_id = default_client_id(self.gw.site, self.gw.id, suffix)
        reconnect = Reconnect(cap=self.cfg.backoff_max,
                              probe_limit_s=min(PROBE_TIMEOUT, self.cfg.connect_timeout))
        targets = [(b.host, b.port) for b in self.brokers]
        index = 0
        failures_this_round = 0
        inbound = asyncio.create_task(self._inbound.run(), name="uplink.inbound")
        try:
            while True:
                broker = self.brokers[index % len(self.brokers)]
                delay = await self._attempt(broker, reconnect)
                # aiomqtt's CONNACK or status wait (asyncio.wait_for, 3.11) may have swallowed
                # a stop: without this the uplink would reconnect forever (gateway/tasks.py)
                honour_cancellation()
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
        finally:
            inbound.cancel()
            await asyncio.gather(inbound, return_exceptions=True)

    async def _attempt(self, broker: Broker, reconnect: Reconnect) -> float | None:
        """One session with `broker`, its end classified; the delay it asks for, if any."""
        delay: float | None = None
        self._last_error.take()  # only causes of this attempt count
        try:
            await self._session(broker)
        except MqttConnectError as exc:  # CONNACK refused (not a later disconnect)
            code = int(exc.rc) if isinstance(exc.rc, int) else int(getattr(exc.rc, "value", 0))
            if code in AUTH_CODES:
                reason = "auth"
                self.log.error(f"broker refused our credentials: {self.dialect.credentials_hint};"
                               " readings stay in the buffer", broker=broker.url, code=code)
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
        return delay

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
        session = self.dialect.open(broker.url, self.client_id)
        client = self._client(broker, session)
        codes = adapter.PubackCodes(client)
        connack = adapter.Connack(client)
        adapter.register_writes_safely(client)
        try:
            await self._connected(client, codes, connack, broker, session)
        except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
            if isinstance(exc, MqttConnectError):
                raise
            lost = adapter.disconnection(client)
            if taken_over(lost):
                raise SessionTakenOver(f"session taken over ({lost})") from exc
            raise
        finally:
            adapter.disconnection(client)  # retrieved: no "Future exception never retrieved"

    async def _connected(self, client: aiomqtt.Client, codes: adapter.PubackCodes,
                         connack: adapter.Connack, broker: Broker,
                         session: DialectSession) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(client)  # CONNACK refusals: MqttCodeError
            adapter.no_delay(client)
            self._max_bytes = min(self.cfg.max_message_bytes,
                                  connack.max_packet or self.cfg.max_message_bytes)
            self.log.info("uplink connected", broker=broker.url,
                          protocol=self.cfg.protocol, tls=broker.tls,
                          max_message_bytes=self._max_bytes,
                          client_id=session.credentials.client_id)  # as sent (platforms sign)
            self._set_connected(broker)
            for sub in session.subscriptions():  # before anything is published
                await client.subscribe(sub.topic, qos=sub.qos,
                                       timeout=self.cfg.publish_timeout)
            boundary = self.source.next_seq  # the backlog: what was stored before this session
            await self.source.settle()  # apply acks of the last connection before reading
            publisher = self._publisher_for(client, codes, session, boundary)
            for out in session.announce():
                if (refusal := await publisher.send(out)) is not None:
                    self.log.warning("broker refused the status message", reason=refusal,
                                     topic=out.topic)
            self._publisher = publisher
            honour_cancellation()  # a stop swallowed by the CONNACK or announce waits

            looked = asyncio.Event()  # session control may have made the session ready
            def wake() -> None:
                publisher.poke()
                self._retained.poke()
                looked.set()

            async def publish_notice(topic: str, payload: bytes) -> str | None:
                while not session.ready():  # Sparkplug: no NDATA before NBIRTH
                    looked.clear()  # looked at again on a message, or each second (a timeout)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(NOT_READY_S):  # never swallows a cancel
                            await looked.wait()
                return await publisher.send(Outgoing(topic, payload, qos=1))

            tasks = [
                # drop notices go beside the data, on their own task (gateway/notices.py)
                asyncio.create_task(NoticeSender(
                    self.drops, "", gateway=self.gw.id, site=self.gw.site, log=self.log,
                    sent=self.metrics.uplink_drop_notices, message=session.drop_notice,
                ).run(publish_notice), name="uplink.notices"),
                asyncio.create_task(self._retained.run(publisher.send, session.ready),
                                    name="uplink.retained"),
                asyncio.create_task(self._inbound.receive(client, session, publisher.send,
                                                          wake), name="uplink.receive"),
            ]
            try:
                await publisher.pump()
            finally:
                self._publisher = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                goodbye = session.goodbye("shutdown") if self._draining else None
                if goodbye is not None:
                    with contextlib.suppress(Exception):
                        await client.publish(goodbye.topic, goodbye.payload, qos=goodbye.qos,
                                             retain=goodbye.retain, timeout=2.0)

    def _publisher_for(self, client: aiomqtt.Client, codes: adapter.PubackCodes,
                       session: DialectSession, boundary: int) -> Publisher:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        limits = Limits(window=cfg.window, live_share=cfg.live_share,
                        max_readings=cfg.batch.max_readings, max_delay=cfg.batch.max_delay,
                        max_packet=self._max_bytes, v5=v5)
        scheduler = Scheduler(self.source, session, limits, self._holds,
                              boundary=boundary,
                              draining=functools.partial(getattr, self, "_draining"))
        return Publisher(client, codes, scheduler=scheduler, source=self.source,
                         drops=self.drops, window=cfg.window, timeout=cfg.publish_timeout,
                         v5=v5, max_bytes=self._max_bytes, state=self.state,
                         metrics=self.metrics, log=self.log, watch=self._watch)

    async def drain(self, grace: float) -> bool:
        """On shutdown: keep publishing what is buffered for up to `grace` seconds.

        Live data no longer waits for `max_delay`. Returns True when the buffer is empty.
        """
        self._draining = True
        if self._publisher is not None:
            self._publisher.poke()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            left = await self.source.settle()  # deletes chunks acknowledged meanwhile
            if left == 0:
                return True
            if self._holds and not await self.source.settle(excluding=list(self._holds)):
                # only what the broker refuses is left: waiting out the grace cannot help
                self.log.warning("unsent readings of devices the broker refuses stay buffered",
                                 devices=sorted(self._holds), readings=left)
                return False
            if loop.time() >= deadline:
                self.log.warning("shutdown grace period over; unsent readings stay buffered",
                                 readings=left)
                return False
            await asyncio.sleep(0.05)

"""One broker's shared subscription: messages in, PUBACKs out only when told.

Each connection is an MQTT 5 session with a stable client id, `clean_start=False` and a
session expiry, subscribed to `$share/{share}/{topic}` at QoS 1. A message is handed on as a
`Delivery` and acknowledged by `ack()` only after its rows committed. What Mosquitto 2.0 does
(verified in tests/ingest/test_broker_semantics.py): unacknowledged messages of a member that
disconnects stay in *its* session and are sent again when the same client id reconnects; new
messages of the share keep being queued to it round robin while it is away. So a process
must come back under the same client id (systemd `Restart=always`); with a clean session its
unacknowledged messages would be lost with the session.

`Receive Maximum` bounds the unacknowledged messages per connection, which bounds memory.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from structlog.typing import FilteringBoundLogger

from gateway.backoff import Backoff
from gateway.ingest import mqttack
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.settings import SourceSection
from gateway.uplink import Broker, adapter, tls_context

STABLE_S = 10.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message, to be acknowledged once committed."""

    source: Source
    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received: float


class Source:
    """Consumes one broker until cancelled, reconnecting with backoff."""

    def __init__(self, cfg: SourceSection, broker: Broker, client_id: str, *,
                 out: asyncio.Queue[Delivery], metrics: IngestMetrics,
                 log: FilteringBoundLogger) -> None:
        self.cfg = cfg
        self.broker = broker
        self.client_id = client_id
        self.out = out
        self.metrics = metrics
        self.log = log.bind(component="source", broker=broker.url)
        self.client: aiomqtt.Client | None = None
        self.generation = 0
        self.filter = f"$share/{cfg.share}/{cfg.topic}"
        self._ssl: ssl.SSLContext | None = None

    def ack(self, delivery: Delivery) -> bool:
        """PUBACK a committed message; skipped when its connection is gone (the broker
        sends it again on the next one and the insert drops it as a duplicate)."""
        client = self.client
        if client is None or delivery.generation != self.generation:
            return False
        return mqttack.ack(client, delivery.mid, delivery.qos)

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = int(self.cfg.session_expiry)
        props.ReceiveMaximum = self.cfg.receive_maximum
        tls = None
        if self.broker.tls:
            if self._ssl is None:
                # tls_context() reads only `.tls`, which both sections share
                self._ssl = tls_context(self.cfg)  # type: ignore[arg-type]
            tls = self._ssl
        client = aiomqtt.Client(
            self.broker.host, self.broker.port,
            username=self.cfg.username,
            password=self.cfg.password.get_secret_value() if self.cfg.password else None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,  # resume the session: its unacknowledged messages come back
            properties=props,
            keepalive=int(self.cfg.keepalive),
            timeout=self.cfg.connect_timeout,
            tls_context=tls,
            tls_insecure=(not self.cfg.tls.verify) if self.broker.tls else None,
        )
        mqttack.enable_manual_ack(client)
        adapter.register_writes_safely(client)  # a drop mid-write: no stale writer
        return client

    async def run(self) -> None:
        """Connect, subscribe, hand messages on; reconnect on failure."""
        backoff = Backoff(base=0.5, cap=self.cfg.backoff_max)
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                self.log.warning("broker connection failed or lost", error=str(exc))
            except (OSError, ssl.SSLError) as exc:
                self.log.warning("broker connection failed or lost", error=str(exc))
            finally:
                self.client = None
                self.metrics.broker_connected.labels(broker=self.broker.url).set(0)
            if time.monotonic() - started >= STABLE_S:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _session(self) -> None:
        client = self._client()
        async with client:
            self.generation += 1
            generation = self.generation
            self.client = client
            codes = await client.subscribe(self.filter, qos=1)
            refused = [c for c in codes if (c if isinstance(c, int) else c.value) >= 0x80]
            if refused:
                raise aiomqtt.MqttError(f"subscription to {self.filter} refused: {refused[0]}")
            self.metrics.broker_connected.labels(broker=self.broker.url).set(1)
            self.log.info("subscribed", filter=self.filter, client_id=self.client_id)
            lost = mqttack.disconnected(client)
            async for message in client.messages:
                payload = message.payload
                await self.out.put(Delivery(
                    self, generation, message.mid, message.qos, message.topic.value,
                    payload if isinstance(payload, bytes) else str(payload).encode(),
                    time.monotonic()))
                if lost.done():
                    break


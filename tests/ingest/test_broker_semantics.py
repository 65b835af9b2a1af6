"""What Mosquitto 2.0 does with shared subscriptions, which the ingest's design rests on
(gateway/ingest/source.py). If an upgrade changes one of these, revisit the design."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support import Mosquitto


class Member:
    """A shared-subscription member with a persistent session and manual acks."""

    def __init__(self, port: int, cid: str, *, ack: bool = True) -> None:
        self.got: list[str] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid,
                             protocol=paho.MQTTv5)
        self.c.manual_ack_set(True)

        def on_message(cl: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
            with self.lock:
                self.got.append(m.payload.decode())
            if ack:
                cl.ack(m.mid, m.qos)

        self.c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.c.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.c.loop_start()

    def subscribe(self) -> None:
        self.c.subscribe("$share/g/t/#", qos=1)
        time.sleep(0.3)

    def crash(self) -> None:
        """Like kill -9: the socket closes without DISCONNECT."""
        self.c.loop_stop()
        self.c.socket().close()  # type: ignore[union-attr]

    def wait(self, n: int) -> list[str]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(self.got) < n:
            time.sleep(0.05)
        with self.lock:
            return sorted(self.got, key=int)


def publish(port: int, values: range) -> None:
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in values:
        pub.publish("t/x", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()


def test_a_crashed_members_share_waits_in_its_session_for_the_same_client_id(
        broker: Mosquitto) -> None:
    a = Member(broker.port, "A", ack=False)
    b = Member(broker.port, "B")
    a.subscribe()
    b.subscribe()
    publish(broker.port, range(10))
    assert len(a.wait(5)) == 5  # round robin; A never acknowledges
    a.crash()
    time.sleep(0.5)
    publish(broker.port, range(10, 20))
    b_got = b.wait(10)
    assert len(b_got) == 10  # B gets only its own turns ...
    a2 = Member(broker.port, "A")  # ... A's unacked and queued share wait for A
    a2_got = a2.wait(10)
    assert sorted(a2_got + b_got, key=int) == [str(i) for i in range(20)]
    a2.c.loop_stop()
    b.c.loop_stop()


def test_a_restarted_broker_forgets_shared_subscriptions() -> None:
    """Persistence keeps plain subscriptions but not shared ones (mosquitto 2.0.11): what
    is published between the restart and the ingest's re-subscribe is lost, and the ingest
    reports it as missing seqs."""
    broker = Mosquitto(persistent=True).start()
    try:
        a = Member(broker.port, "A")
        a.subscribe()
        a.c.disconnect()
        a.c.loop_stop()
        broker.restart()
        publish(broker.port, range(3))
        again = Member(broker.port, "A")
        time.sleep(1.0)
        assert again.got == []
        again.c.loop_stop()
    finally:
        broker.close()

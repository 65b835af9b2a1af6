"""The pieces the commands path adds to the uplink: decoding, kept sessions, no Nagle."""

from __future__ import annotations

import socket

import aiomqtt

from gateway.config import GatewaySection, MqttSection
from gateway.uplink import adapter
from gateway.uplink.dialects.parkgate import ParkgateDialect
from gateway.uplink.messages import Incoming
from tests.support import Mosquitto

CMD = "parkgate/s/g/cmd"


def dialect() -> ParkgateDialect:
    return ParkgateDialect(MqttSection(brokers=["mqtt://127.0.0.1:1883"]),
                           GatewaySection(id="g", site="s"), command_topic=CMD,
                           reply_topic=f"{CMD}/reply")


def test_decode_requests_and_what_is_not_one() -> None:
    d = dialect()
    assert d.decode(Incoming("parkgate/s/g/other", b"{}")) is None
    good = d.decode(Incoming(CMD, b'{"v": 1, "id": "a"}'))
    assert good is not None and good.document == {"v": 1, "id": "a"} and good.error is None
    for payload, says in ((b"{", "not JSON"), (b'{"v":1,"v":2}', "appears twice"),
                          (b"\xff", "not UTF-8"), (b"[]", "not a JSON object"),
                          (b'{"value": NaN}', "not a JSON number")):
        bad = d.decode(Incoming(CMD, payload))
        assert bad is not None and bad.error is not None and says in bad.error, payload


def test_reply_routes() -> None:
    d = dialect()
    req = d.decode(Incoming(CMD, b"{}", response_topic="op/1", correlation_data=b"c"))
    assert req is not None
    out = d.reply(req, {"id": "a", "status": "ok"})
    assert (out.topic, out.correlation_data, out.qos) == ("op/1", b"c", 1)
    plain = d.decode(Incoming(CMD, b"{}"))
    assert plain is not None
    assert d.reply(plain, {"id": "a"}).topic == f"{CMD}/reply"


def test_connect_properties() -> None:
    assert adapter.connect_properties(0) is None
    props = adapter.connect_properties(3600)
    assert props is not None and props.SessionExpiryInterval == 3600


async def test_no_delay_on_the_uplink_socket(shared_broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", shared_broker.port,
                              identifier="nodelay-test") as client:
        sock = adapter.paho_client(client).socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        adapter.no_delay(client)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1

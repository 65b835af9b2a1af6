"""`parkgate command send` against a real broker, with a scripted gateway answering."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.commands.cli import parse_value
from gateway.commands.keys import parse_public_key
from gateway.commands.request import canonical_form
from gateway.commands.signing import Verifier, keygen
from tests.support import ROOT, Mosquitto, base_config, write_config


@pytest.mark.parametrize(("text", "value"), [
    ("21.5", 21.5), ("3", 3), ("true", True), ('"on"', "on"), ("auto", "auto"),
    ("[1]", "[1]"), ("null", "null"),
])
def test_parse_value(text: str, value: Any) -> None:
    got = parse_value(text)
    assert got == value and type(got) is type(value)


class ScriptedGateway:
    """Answers every request on the command topic as a gateway would, recording it."""

    def __init__(self, port: int, topic: str, status: str = "ok") -> None:
        self.requests: list[tuple[dict[str, Any], Any]] = []
        self.ready = threading.Event()
        self.status = status
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"gw-{id(self)}",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_a: (c.subscribe(topic, qos=1), self.ready.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        props = msg.properties
        self.requests.append((doc, props))
        reply = {"v": 1, "id": doc["id"], "gateway": "gw1", "device": doc["device"],
                 "action": doc["action"], "status": self.status, "ts": 1}
        out = Properties(PacketTypes.PUBLISH)
        out.CorrelationData = props.CorrelationData
        c.publish(props.ResponseTopic, json.dumps(reply), qos=1, properties=out)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _send(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "command", "send", "-c", str(cfg),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          check=False)


def test_send_signs_publishes_mqtt5_and_prints_the_reply(shared_broker: Mosquitto,
                                                         tmp_path: Path) -> None:
    pub, kid = keygen(tmp_path / "op.key")
    cfg = base_config(tmp_path, shared_broker.port, [{"name": "boiler", "driver": "sim"}],
                      gateway={"id": f"gw-{tmp_path.name[-8:]}", "site": "cli"},
                      commands={"enabled": True, "max_age": "20s",
                                "verify_keys": [f"${{file:{pub}}}"]})
    path = write_config(tmp_path / "gw.yaml", cfg)
    topic = f"parkgate/cli/{cfg['gateway']['id']}/cmd"
    gw = ScriptedGateway(shared_broker.port, topic)
    try:
        assert gw.ready.wait(10)
        res = _send(path, "boiler", "write", "setpoint", "21.5", "--key", str(tmp_path / "op.key"))
        assert res.returncode == 0, res.stderr
        reply = json.loads(res.stdout)
        assert reply["status"] == "ok"
        doc, props = gw.requests[0]
        assert reply["id"] == doc["id"]
        assert (doc["device"], doc["action"], doc["point"], doc["value"]) == (
            "boiler", "write", "setpoint", 21.5)
        verifier = Verifier([parse_public_key(pub.read_text())])
        assert verifier.verify(canonical_form(doc), doc["sig"]) == kid
        assert props.ResponseTopic.startswith(f"{topic}/reply/")
        assert props.CorrelationData == doc["id"].encode()
        assert props.MessageExpiryInterval == 20
        # not ok: exit 3, the reply still printed; no --key: a warning
        gw.status = "refused"
        res = _send(path, "boiler", "poll")
        assert res.returncode == 3
        assert json.loads(res.stdout)["status"] == "refused"
        assert "accepts signed requests only" in res.stderr
        assert "sig" not in gw.requests[1][0]
    finally:
        gw.close()


def test_send_without_a_gateway_times_out(shared_broker: Mosquitto, tmp_path: Path) -> None:
    cfg = base_config(tmp_path, shared_broker.port, [{"name": "boiler", "driver": "sim"}],
                      gateway={"id": "nobody", "site": "cli"},
                      commands={"enabled": True, "allow_unsigned": True})
    path = write_config(tmp_path / "gw.yaml", cfg)
    res = _send(path, "boiler", "read", "x", "--timeout", "0.5")
    assert res.returncode == 4
    assert "no reply within 0.5 s" in res.stderr
    res = _send(path, "boiler", "write", "x")
    assert res.returncode == 1 and "write needs a VALUE" in res.stderr

"""Commands end to end: a real broker, `parkgate run` as a subprocess, a signing operator."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.signing import keygen
from tests.commands.operator import Operator
from tests.support import (
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    wait_metric,
    write_config,
)

pytestmark = pytest.mark.slow

BOILER: dict[str, Any] = {
    "name": "boiler", "driver": "sim", "interval": "1h", "points": 0,
    "variables": [
        {"name": "setpoint", "initial": 20.0, "write": {"min": 5, "max": 80}},
        {"name": "pump_on", "initial": False, "write": {}},
        {"name": "valve", "initial": 0, "write": {}, "reject_code": 2},
        {"name": "flow", "initial": 3.5},
    ]}
FLAKY: dict[str, Any] = {"name": "flaky", "driver": "sim", "interval": "100ms",
                         "fail_every": 1}


class Rig:
    def __init__(self, tmp: Path, broker: Mosquitto, *, max_age: str = "30s",
                 devices: list[dict[str, Any]] | None = None, protocol: str = "5") -> None:
        self.tmp = tmp
        self.broker = broker
        self.gw_id = f"gw-{tmp.name[-10:]}".replace("_", "-")
        pub, _ = keygen(tmp / "op.key")
        self.cfg = base_config(tmp, broker.port, devices or [BOILER],
                               gateway={"id": self.gw_id, "site": "e2e"},
                               uplink={"mqtt": {"brokers": [broker.url],
                                                "batch": {"max_delay": "100ms"},
                                                "device_state": True,
                                                "protocol": protocol}},
                               commands={"enabled": True, "max_age": max_age,
                                         "verify_keys": [f"${{file:{pub}}}"]})
        self.path = write_config(tmp / "gw.yaml", self.cfg)
        self.gw = GatewayProcess(self.path)
        self.op = Operator(broker.port, "e2e", self.gw_id, tmp / "op.key")

    def start(self) -> None:
        self.gw.start()
        # the agent subscribes before it publishes its status: online means it listens
        wait_metric(self.cfg["metrics"]["listen"], "parkgate_uplink_connected",
                    lambda v: v == 1, 30)

    def close(self) -> None:
        self.gw.kill()
        self.op.close()


@pytest.fixture
def rig(tmp_path: Path, shared_broker: Mosquitto) -> Iterator[Rig]:
    r = Rig(tmp_path, shared_broker)
    r.start()
    yield r
    r.close()


def test_write_read_poll_and_audit_upstream(rig: Rig) -> None:
    op = rig.op
    collector = Collector(rig.broker.port, f"parkgate/e2e/{rig.gw_id}/+")
    try:
        doc = op.request("boiler", "write", "setpoint", 42.5)
        op.publish(doc)
        [(reply, props, topic)] = _raw(op, doc["id"])
        assert reply["status"] == "ok" and reply["value"] == 42.5, reply
        assert topic == op.response_topic
        assert props.CorrelationData == doc["id"].encode()
        read = op.send(op.request("boiler", "read", "setpoint"))
        assert (read["status"], read["value"]) == ("ok", 42.5)
        polled = op.send(op.request("boiler", "poll"))
        assert polled["status"] == "ok"
        # the poll's readings and the audit records go upstream through the buffer
        assert collector.wait_for(lambda c: any(
            r["metric"] == "setpoint" and r["value"] == 42.5 for r in c.readings()))
        assert collector.wait_for(lambda c: len(
            [r for r in c.readings() if r["metric"] == "$command"]) >= 3)
        audits = [json.loads(r["value"]) for r in collector.readings()
                  if r["metric"] == "$command"]
        write = next(a for a in audits if a["id"] == doc["id"])
        assert (write["old"], write["new"], write["status"]) == (20.0, 42.5, "ok")
        assert write["key"] and len(write["key"]) == 16
        failed = op.send(op.request("boiler", "write", "valve", 1))
        assert (failed["status"], failed["code"]) == ("failed", 2)
        listen = rig.cfg["metrics"]["listen"]
        wait_metric(listen, 'parkgate_commands_total{action="write",device="boiler",'
                            'status="ok"}', lambda v: v == 1)
        wait_metric(listen, 'parkgate_commands_total{action="write",device="boiler",'
                            'status="failed"}', lambda v: v == 1)
    finally:
        collector.close()


def _raw(op: Operator, rid: str) -> list[tuple[dict[str, Any], Any, str]]:
    op.wait(rid)
    return op.replies[rid]


def test_unsigned_and_badly_signed_refused_on_the_reply_topic(rig: Rig) -> None:
    op = rig.op
    unsigned = op.request("boiler", "write", "setpoint", 70, sign=False)
    op.publish(unsigned)
    [(reply, _props, topic)] = _raw(op, unsigned["id"])
    assert reply["status"] == "refused" and "not signed" in reply["error"]
    assert topic == op.reply_topic  # not the response topic the request asked for
    forged = op.request("boiler", "write", "setpoint", 70)
    forged["value"] = 75
    assert op.send(forged)["status"] == "refused"
    assert op.send(op.request("boiler", "write", "setpoint", 81))["status"] == "refused"
    assert op.send(op.request("boiler", "write", "flow", 1.0))["status"] == "refused"
    assert op.send(op.request("boiler", "write", "nope", 1.0))["status"] == "refused"
    assert op.send(op.request("ghost", "write", "setpoint", 30))["status"] == "refused"
    read = op.send(op.request("boiler", "read", "setpoint"))
    assert read["value"] == 20.0


def test_duplicate_across_kill_9(rig: Rig) -> None:
    op = rig.op
    doc = op.request("boiler", "write", "setpoint", 55.0)
    assert op.send(doc)["status"] == "ok"
    rig.gw.kill()  # SIGKILL
    rig.start()
    op.publish(doc)
    replies = op.wait(doc["id"], count=2)
    assert replies[1]["status"] == "duplicate"
    assert replies[1]["value"] == 55.0 and replies[1]["first"]["status"] == "ok"
    # not run again: the restarted sim holds its initial value
    assert op.send(op.request("boiler", "read", "setpoint"))["value"] == 20.0


def test_device_state_retained(tmp_path: Path, shared_broker: Mosquitto) -> None:
    r = Rig(tmp_path, shared_broker, devices=[BOILER, FLAKY])
    try:
        r.start()
        boiler = r.op.wait_state("boiler", lambda s: s.get("state") == "up")
        assert boiler["since"] <= time.time() * 1000
        flaky = r.op.wait_state("flaky", lambda s: s.get("state") == "down")
        assert flaky["kind"] == "simulated"
        # a late subscriber sees both (retained)
        late = Operator(shared_broker.port, "e2e", r.gw_id, None)
        try:
            late.wait_state("boiler", lambda s: s.get("state") == "up")
            late.wait_state("flaky", lambda s: s.get("state") == "down")
        finally:
            late.close()
    finally:
        r.close()


def test_a_removed_device_state_is_cleared_on_reload(tmp_path: Path,
                                                    shared_broker: Mosquitto) -> None:
    import signal

    r = Rig(tmp_path, shared_broker, devices=[BOILER, FLAKY])
    try:
        r.start()
        r.op.wait_state("flaky", lambda s: s.get("state") == "down")
        r.cfg["devices"] = [BOILER]
        write_config(r.path, r.cfg)
        r.gw.signal(signal.SIGHUP)
        r.op.wait_state("flaky", lambda s: s == {})  # the retained message is deleted
        late = Operator(shared_broker.port, "e2e", r.gw_id, None)
        try:
            late.wait_state("boiler", lambda s: s.get("state") == "up")
            assert "flaky" not in late.states
        finally:
            late.close()
    finally:
        r.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_request_queued_during_an_outage_is_expired(tmp_path: Path, protocol: str) -> None:
    broker = Mosquitto(persistent=True).start()
    r = Rig(tmp_path, broker, max_age="2s", protocol=protocol)
    try:
        r.start()
        assert r.op.send(r.op.request("boiler", "read", "setpoint"))["status"] == "ok"
        r.gw.kill()  # the gateway is away; its session (and subscription) stays
        stale = r.op.request("boiler", "write", "setpoint", 60.0)
        r.op.publish(stale)          # queued by the broker for the gateway's session
        gone = r.op.request("boiler", "write", "setpoint", 61.0)
        r.op.publish(gone, expiry=1)  # the broker drops it after 1 s: never delivered
        time.sleep(3)
        r.start()
        [(reply, _props, topic)] = _raw(r.op, stale["id"])
        assert reply["status"] == "expired" and "max_age is 2 s" in reply["error"]
        # MQTT 3.1.1 carries no response topic: the reply goes to the reply topic
        assert topic == (r.op.response_topic if protocol == "5" else r.op.reply_topic)
        read = r.op.send(r.op.request("boiler", "read", "setpoint"))
        assert read["value"] == 20.0
        assert gone["id"] not in r.op.replies
    finally:
        r.close()
        broker.close()


def test_command_send_cli_against_the_agent(rig: Rig) -> None:
    import subprocess
    import sys

    from tests.support import ROOT

    def send(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "command", "send", "-c",
                               str(rig.path), *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=60, check=False)

    key = str(rig.tmp / "op.key")
    done = send("boiler", "write", "setpoint", "33.5", "--key", key)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["value"] == 33.5
    done = send("boiler", "read", "setpoint", "--key", key)
    assert json.loads(done.stdout)["value"] == 33.5
    done = send("boiler", "write", "setpoint", "95", "--key", key)
    assert done.returncode == 3
    assert "above the maximum 80" in json.loads(done.stdout)["error"]


def test_unsigned_allowed_warns_at_start(tmp_path: Path, shared_broker: Mosquitto) -> None:
    r = Rig(tmp_path, shared_broker)
    r.cfg["commands"] = {"enabled": True, "allow_unsigned": True}
    write_config(r.path, r.cfg)
    try:
        r.start()
        reply = r.op.send(r.op.request("boiler", "write", "pump_on", True, sign=False))
        assert reply["status"] == "ok"
        assert "commands accept UNSIGNED requests" in r.gw.output()
    finally:
        r.close()


def test_request_held_by_the_sender_through_a_broker_outage_is_expired(
        tmp_path: Path) -> None:
    """The broker is down: the operator's client keeps the request and sends it when the
    broker is back, after max_age; the gateway answers expired and runs nothing."""
    broker = Mosquitto(persistent=True).start()
    r = Rig(tmp_path, broker, max_age="2s")
    r.op.close()
    r.op = Operator(broker.port, "e2e", r.gw_id, tmp_path / "op.key", persistent=True)
    try:
        r.start()
        assert r.op.send(r.op.request("boiler", "read", "setpoint"))["status"] == "ok"
        broker.stop()
        late = r.op.request("boiler", "write", "setpoint", 60.0)
        r.op.publish(late, wait=False)  # queued in the client while the broker is down
        time.sleep(3)
        broker.start()
        reply = r.op.wait(late["id"], timeout=30)[0]
        assert reply["status"] == "expired" and "max_age is 2 s" in reply["error"]
        assert r.op.send(r.op.request("boiler", "read", "setpoint"))["value"] == 20.0
    finally:
        r.close()
        broker.close()

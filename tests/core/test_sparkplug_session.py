"""The Sparkplug dialect without a broker: session order, seq, rebirth, host, DCMD."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.config import GatewaySection, MqttSection
from gateway.uplink.dialects.sparkplug import codec
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb
from gateway.uplink.dialects.sparkplug.dialect import SparkplugDialect
from gateway.uplink.dialects.sparkplug.session import SparkplugSession
from gateway.uplink.messages import Incoming, Outgoing

GW = GatewaySection(id="gw-1", site="park")


def dialect(tmp: Path, **sp: Any) -> SparkplugDialect:
    cfg = MqttSection(brokers=["mqtt://127.0.0.1:1883"], dialect="sparkplug",
                      sparkplug={"group": "G1", "node": "N1", **sp})
    return SparkplugDialect(cfg, GW, tmp / "buffer.db")


def items(device: str, *metrics: tuple[str, object], seq: int = 1) -> bytes:
    return ",".join(json.dumps({"seq": seq + i, "device": device, "metric": m, "value": v,
                                "unit": None, "ts": 1000 + i, "quality": "good"})
                    for i, (m, v) in enumerate(metrics)).encode()


def wire(session: SparkplugSession, outs: list[Outgoing]) -> list[tuple[str, Any]]:
    """Stamp in order (as the publisher does) and decode."""
    got = []
    for out in outs:
        sent = session.stamp(out)
        p = pb.Payload()
        p.ParseFromString(sent.payload)
        got.append((sent.topic.split("/", 2)[2], p))
    return got


def test_connect_births_data_and_seq(tmp_path: Path) -> None:
    d = dialect(tmp_path)
    s = d.open("mqtt://x", "cid")
    assert s.will.topic == "spBv1.0/G1/NDEATH/N1" and s.will.qos == 1 and not s.will.retain
    will = pb.Payload()
    will.ParseFromString(s.will.payload)
    assert will.metrics[0].name == "bdSeq" and will.metrics[0].long_value == 0
    assert [x.topic for x in s.subscriptions()] == ["spBv1.0/G1/NCMD/N1",
                                                   "spBv1.0/G1/DCMD/N1/+"]
    assert not s.ready()
    got = wire(s, list(s.announce()))
    assert [t for t, _ in got] == ["NBIRTH/N1"]  # no device known yet
    assert got[0][1].seq == 0
    assert s.ready()
    framed = s.frame("m1", items("m1", ("a", 1.5), ("b", True)), historical=False)
    got = wire(s, list(framed))
    assert [t for t, _ in got] == ["DBIRTH/N1/m1", "DDATA/N1/m1"]
    assert [p.seq for _, p in got] == [1, 2]
    assert {m.name for m in got[0][1].metrics} == {"a", "b"}
    framed = s.frame("m1", items("m1", ("a", 2.5), seq=3), historical=False)
    assert [t for t, _ in wire(s, list(framed))] == ["DDATA/N1/m1"]  # born already
    framed = s.frame("m1", items("m1", ("c", 7), seq=4), historical=False)
    got = wire(s, list(framed))  # a metric its birth did not list: DBIRTH again first
    assert [t for t, _ in got] == ["DBIRTH/N1/m1", "DDATA/N1/m1"]
    assert {m.name for m in got[0][1].metrics} == {"a", "b", "c"}
    # seq wraps 255 -> 0 and NDEATH (goodbye) has none
    seqs = [p.seq for _, p in wire(s, [s.frame("m1", items("m1", ("a", 1.0)), False)[-1]
                                       for _ in range(260)])]
    assert seqs[:3] == [6, 7, 8] and seqs[249:252] == [255, 0, 1]
    bye = pb.Payload()
    bye.ParseFromString(s.stamp(s.goodbye("shutdown")).payload)
    assert not bye.HasField("seq") and bye.metrics[0].long_value == 0
    # the next session: bdSeq + 1, written down before the CONNECT
    s2 = d.open("mqtt://x", "cid")
    assert s2.bd_seq == 1 and (tmp_path / "buffer.db.sparkplug-bdseq").read_text() == "1\n"
    got = wire(s2, list(s2.announce()))
    assert [t for t, _ in got] == ["NBIRTH/N1", "DBIRTH/N1/m1"]
    assert [p.seq for _, p in got] == [0, 1]
    assert {m.name: m.long_value for m in got[0][1].metrics}["bdSeq"] == 1


def test_rebirth_on_ncmd(tmp_path: Path) -> None:
    d = dialect(tmp_path)
    s = d.open("b", "c")
    wire(s, list(s.announce()))
    wire(s, list(s.frame("m1", items("m1", ("a", 1)), False)))
    ncmd = pb.Payload(timestamp=1)
    m = ncmd.metrics.add()
    m.name, m.datatype, m.boolean_value = "Node Control/Rebirth", pb.Boolean, True
    births = list(s.observe(Incoming("spBv1.0/G1/NCMD/N1", ncmd.SerializeToString())))
    assert not s.ready()  # data stops at once
    got = wire(s, births[:1])
    assert not s.ready()  # no data between NBIRTH and the DBIRTHs of a rebirth
    got += wire(s, births[1:])
    assert s.ready()
    assert [(t, p.seq) for t, p in got] == [("NBIRTH/N1", 0), ("DBIRTH/N1/m1", 1)]
    assert s.observe(Incoming("spBv1.0/G1/NCMD/other", ncmd.SerializeToString())) == ()


def test_primary_host_gates_births_and_data(tmp_path: Path) -> None:
    d = dialect(tmp_path, primary_host="scada")
    s = d.open("b", "c")
    assert "spBv1.0/STATE/scada" in [x.topic for x in s.subscriptions()]
    assert list(s.announce()) == [] and not s.ready()
    online = json.dumps({"online": True, "timestamp": 10}).encode()
    got = wire(s, list(s.observe(Incoming("spBv1.0/STATE/scada", online))))
    assert [t for t, _ in got] == ["NBIRTH/N1"] and s.ready()
    stale = json.dumps({"online": False, "timestamp": 5}).encode()
    assert s.observe(Incoming("spBv1.0/STATE/scada", stale)) == () and s.ready()
    offline = json.dumps({"online": False, "timestamp": 11}).encode()
    assert s.observe(Incoming("spBv1.0/STATE/scada", offline)) == () and not s.ready()
    again = json.dumps({"online": True, "timestamp": 12}).encode()
    assert [t for t, _ in wire(s, list(s.observe(Incoming("spBv1.0/STATE/scada", again))))] \
        == ["NBIRTH/N1"]


def test_device_state_sends_ddeath_and_dbirth(tmp_path: Path) -> None:
    d = dialect(tmp_path)
    s = d.open("b", "c")
    wire(s, list(s.announce()))
    wire(s, list(s.frame("m1", items("m1", ("a", 1)), False)))
    down = d.device_state("m1", {"state": "down", "error": "timeout"})
    assert not down.retain
    got = wire(s, [down])
    assert got[0][0] == "DDEATH/N1/m1" and got[0][1].seq == 3
    s2 = d.open("b", "c")  # after a reconnect: the down device is not born
    assert [t for t, _ in wire(s2, list(s2.announce()))] == ["NBIRTH/N1"]
    up = wire(s2, [d.device_state("m1", {"state": "up"})])
    assert up[0][0] == "DBIRTH/N1/m1" and [m.name for m in up[0][1].metrics] == ["a"]
    assert s2.credentials.clean  # Sparkplug needs a clean session
    gone = wire(s2, [d.device_state("m1", {})])  # removed from the config by a reload
    assert gone[0][0] == "DDEATH/N1/m1"
    s3 = d.open("b", "c")
    assert [t for t, _ in wire(s3, list(s3.announce()))] == ["NBIRTH/N1"]


def dcmd(name: str | None, value: float, *, alias: int | None = None,
         sig: str | None = None, uuid: str | None = None) -> bytes:
    p = pb.Payload(timestamp=1764345600123)
    if uuid:
        p.uuid = uuid
    m = p.metrics.add()
    if name:
        m.name = name
    if alias is not None:
        m.alias = alias
    m.datatype = pb.Double
    m.double_value = value
    if sig:
        codec.add_property(m.properties, "sig", codec.STRING, sig)
    return p.SerializeToString()


def test_dcmd_maps_to_a_command_request(tmp_path: Path) -> None:
    d = dialect(tmp_path)
    s = d.open("b", "c")
    wire(s, list(s.frame("plc", items("plc", ("setpoint", 20.0)), False)))
    signed = d.decode(Incoming("spBv1.0/G1/DCMD/N1/plc",
                               dcmd("setpoint", 21.5, sig="c2ln", uuid="7c1e2f0a")))
    assert signed is not None and signed.error is None
    assert dict(signed.document) == {"v": 1, "id": "7c1e2f0a", "ts": 1764345600123,
                                     "device": "plc", "action": "write",
                                     "point": "setpoint", "value": 21.5, "sig": "c2ln"}
    alias = d.registry.metric("plc", "setpoint")
    assert alias is not None
    by_alias = d.decode(Incoming("spBv1.0/G1/DCMD/N1/plc",
                                 dcmd(None, 22.0, alias=alias.alias, sig="x")))
    assert by_alias is not None and by_alias.document["point"] == "setpoint"
    assert str(by_alias.document["id"]).startswith("spb:G1/N1/plc:1764345600123:")
    unsigned = d.decode(Incoming("spBv1.0/G1/DCMD/N1/plc", dcmd("setpoint", 1.0)))
    assert unsigned is not None and unsigned.error is not None
    assert "allow_unsigned_dcmd" in unsigned.error
    assert d.decode(Incoming("spBv1.0/G1/DCMD/N1/plc", b"\xff\x00junk")).error  # type: ignore[union-attr]
    assert d.decode(Incoming("spBv1.0/G1/DCMD/other/plc", dcmd("x", 1.0))) is None
    assert d.decode(Incoming("spBv1.0/G1/NCMD/N1", dcmd("x", 1.0))) is None
    allowed = dialect(tmp_path, allow_unsigned_dcmd=True)
    ok = allowed.decode(Incoming("spBv1.0/G1/DCMD/N1/plc", dcmd("setpoint", 1.0)))
    assert ok is not None and ok.error is None and "sig" not in ok.document
    assert ok.unsigned_ok and not signed.unsigned_ok


def test_reply_goes_out_as_ndata(tmp_path: Path) -> None:
    d = dialect(tmp_path)
    s = d.open("b", "c")
    wire(s, list(s.announce()))
    req = d.decode(Incoming("spBv1.0/G1/DCMD/N1/plc", dcmd("setpoint", 1.0, sig="x")))
    assert req is not None
    out = d.reply(req, {"v": 1, "id": "a", "status": "refused", "error": "no"})
    got = wire(s, [out])
    assert got[0][0] == "NDATA/N1" and got[0][1].seq == 1
    metric = got[0][1].metrics[0]
    assert metric.alias == 5 and json.loads(metric.string_value)["status"] == "refused"

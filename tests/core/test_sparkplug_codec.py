"""Sparkplug B encoding against the 3.0 specification's examples (chapter 6, "Payloads")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.uplink.dialects.sparkplug import codec, ddata, topics
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb
from gateway.uplink.dialects.sparkplug.bdseq import BdSeq
from gateway.uplink.dialects.sparkplug.registry import NODE_ALIASES, Registry


def test_topics_are_the_specifications() -> None:
    # chapter 6 examples: group "Sparkplug B Devices", node "Raspberry Pi", device "Pibrella"
    g, n, d = "Sparkplug B Devices", "Raspberry Pi", "Pibrella"
    assert topics.topic(g, "NBIRTH", n) == "spBv1.0/Sparkplug B Devices/NBIRTH/Raspberry Pi"
    assert topics.topic(g, "DBIRTH", n, d) == \
        "spBv1.0/Sparkplug B Devices/DBIRTH/Raspberry Pi/Pibrella"
    assert topics.state_topic("scada") == "spBv1.0/STATE/scada"
    assert topics.parse_topic("spBv1.0/G/DCMD/N/dev") == ("G", "DCMD", "N", "dev")
    assert topics.parse_topic("spBv1.0/G/NCMD/N") == ("G", "NCMD", "N", None)
    for bad in ("spBv1.0/STATE/host", "spBv1.0/G/DCMD/N", "spBv1.0/G/NCMD/N/x",
                "spAv1.0/G/NBIRTH/N", "spBv1.0/G/FOO/N", "parkgate/a/b/c"):
        assert topics.parse_topic(bad) is None, bad


@pytest.mark.parametrize(("value", "problem"), [
    ("plant-1", None), ("Sparkplug B Devices", None), ("", "must not be empty"),
    ("a/b", "contains /"), ("a+b", "contains +"), ("a#", "contains #"),
])
def test_ids(value: str, problem: str | None) -> None:
    found = topics.id_problem(value)
    assert (found is None) == (problem is None)
    if problem:
        assert found is not None and problem in found


def test_the_ndata_example_with_its_seq_appended_is_what_protobuf_encodes() -> None:
    """The spec's NDATA example ({"timestamp": 1486144502122, metric "Supply Voltage",
    Float 12.3, "seq": 2}); our seq is appended after the body: byte-identical to
    protobuf's own encoding, which writes fields in number order (seq 3 after metrics 2)."""
    want = pb.Payload(timestamp=1486144502122, seq=2)
    m = want.metrics.add()
    m.name = "Supply Voltage"
    m.timestamp = 1486144502122
    m.datatype = pb.Float
    m.float_value = 12.3
    body = pb.Payload(timestamp=1486144502122)
    body.metrics.add().CopyFrom(m)
    assert codec.with_seq(body.SerializeToString(), 2) == want.SerializeToString()
    for seq in (0, 127, 128, 255):  # one and two byte varints
        got = pb.Payload()
        got.ParseFromString(codec.with_seq(body.SerializeToString(), seq))
        assert got.seq == seq


def test_nbirth_has_bdseq_rebirth_false_names_aliases_datatypes() -> None:
    reg = Registry("gw-1", "site-1")
    got = pb.Payload()
    got.ParseFromString(codec.with_seq(reg.node_birth(7, 1486144502122), 0))
    assert got.seq == 0 and got.timestamp == 1486144502122
    by_name = {m.name: m for m in got.metrics}
    assert by_name["bdSeq"].long_value == 7 and by_name["bdSeq"].datatype == pb.Int64
    rebirth = by_name["Node Control/Rebirth"]
    assert rebirth.datatype == pb.Boolean and rebirth.boolean_value is False
    assert by_name["Node Info/Gateway"].string_value == "gw-1"
    for m in got.metrics:  # birth metrics: name, alias, timestamp and datatype
        assert m.name and m.HasField("alias") and m.timestamp and m.datatype
        assert NODE_ALIASES[m.name] == m.alias


def _items(*docs: dict[str, object]) -> bytes:
    return ",".join(json.dumps(d, separators=(",", ":")) for d in docs).encode()


def test_dbirth_lists_every_metric_and_ddata_goes_by_alias() -> None:
    """Types from the value; DDATA metrics carry alias, timestamp, value, `seq` and (when
    not good) `Quality`, no name (tck-id-payloads-alias-data-cmd-requirement)."""
    reg = Registry("gw", "s")
    rs = codec.readings(_items(
        {"seq": 41, "device": "m", "metric": "Inputs/A", "value": True, "unit": None,
         "ts": 1486144502122, "quality": "good"},
        {"seq": 42, "device": "m", "metric": "voltage", "value": 231.4, "unit": "V",
         "ts": 1486144502122, "quality": "uncertain"},
        {"seq": 43, "device": "m", "metric": "count", "value": -5, "unit": None,
         "ts": 1486144502123, "quality": "bad"},
        {"seq": 44, "device": "m", "metric": "label", "value": "on", "unit": None,
         "ts": 1486144502123, "quality": "good"},
    ))
    assert reg.learn("m", rs) is True
    birth = pb.Payload()
    birth.ParseFromString(reg.device_birth("m", 1486144502200))
    types = {m.name: m.datatype for m in birth.metrics}
    assert types == {"Inputs/A": pb.Boolean, "voltage": pb.Double, "count": pb.Int64,
                     "label": pb.String}
    aliases = {m.name: m.alias for m in birth.metrics}
    assert len(set(aliases.values())) == 4
    assert not set(aliases.values()) & set(NODE_ALIASES.values())  # unique on the node
    volt = next(m for m in birth.metrics if m.name == "voltage")
    assert codec.properties(volt) == {"engUnit": "V"}

    data = pb.Payload()
    data.ParseFromString(reg.device_data("m", rs, 1486144502300, historical=True))
    assert [m.alias for m in data.metrics] == [aliases[r.metric] for r in rs]
    assert all(not m.name and m.is_historical for m in data.metrics)
    assert [codec.metric_value(m, types[r.metric]) for m, r in zip(data.metrics, rs,
                                                                  strict=True)] == \
        [True, 231.4, -5, "on"]
    props = [codec.properties(m) for m in data.metrics]
    assert props == [{"seq": 41}, {"seq": 42, "Quality": 500}, {"seq": 43, "Quality": 0},
                     {"seq": 44}]
    quality = data.metrics[2].properties.values[1]
    assert quality.type == pb.Int32 and quality.WhichOneof("value") == "int_value"


def test_a_new_metric_or_a_type_that_does_not_fit_changes_the_birth() -> None:
    reg = Registry("gw", "s")

    def r(metric: str, value: object, seq: int = 1) -> codec.Reading:
        return codec.Reading(seq, metric, value, None, 1000 + seq, "good")

    assert reg.learn("d", [r("a", 1)])
    assert not reg.learn("d", [r("a", 2, 2)])          # same metric, same type
    assert reg.learn("d", [r("a", 2.5, 3)])            # Int64 -> Double: a new birth
    assert not reg.learn("d", [r("a", 3, 4)])          # an int still fits a Double
    assert reg.learn("d", [r("b", None, 5)])           # a new metric
    known = reg.metric("d", "a")
    assert known is not None and known.value == 3 and known.datatype == codec.DOUBLE
    assert reg.learn("d", [r("a", "on", 6)])           # a number, then text: String
    assert not reg.learn("d", [r("a", 1.5, 7), r("a", True, 8)])  # anything fits String
    assert reg.learn("d", [r("e", True, 9), r("e", 2**63, 10)])   # Boolean + UInt64
    assert [reg.metric("d", m).datatype for m in "ae"] == [codec.STRING, codec.STRING]  # type: ignore[union-attr]


def test_ndeath_carries_bdseq_and_no_seq() -> None:
    got = pb.Payload()
    got.ParseFromString(codec.death(255, 5))
    assert not got.HasField("seq")
    assert [(m.name, m.long_value, m.datatype) for m in got.metrics] == [("bdSeq", 255, 4)]


def test_state_payloads() -> None:
    assert codec.state_online(b'{"online": true, "timestamp": 1668114759262}') == \
        (True, 1668114759262)
    assert codec.state_online(b'{"online": false, "timestamp": 5}') == (False, 5)
    assert codec.state_online(b"ONLINE") is None  # the 2.2 form is not a 3.0 STATE
    assert codec.state_online(b'{"online": "yes"}') is None


def test_rebirth_request_by_name_or_alias() -> None:
    ncmd = pb.Payload(timestamp=1486144502122)
    m = ncmd.metrics.add()
    m.name = "Node Control/Rebirth"
    m.datatype = pb.Boolean
    m.boolean_value = True
    assert codec.asks_rebirth(ncmd.SerializeToString())
    m.ClearField("name")
    m.alias = NODE_ALIASES["Node Control/Rebirth"]
    names = {a: n for n, a in NODE_ALIASES.items()}
    assert codec.asks_rebirth(ncmd.SerializeToString(), names)
    m.boolean_value = False
    assert not codec.asks_rebirth(ncmd.SerializeToString(), names)
    assert not codec.asks_rebirth(b"\xff\xff\xff")


def test_bdseq_persists_wraps_and_survives_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db.sparkplug-bdseq"
    first = BdSeq(path)
    assert [first.next() for _ in range(3)] == [0, 1, 2]
    assert path.read_text() == "2\n"
    again = BdSeq(path)  # a restart (also after kill -9: written before each CONNECT)
    assert again.next() == 3
    path.write_text("255\n")
    assert BdSeq(path).next() == 0  # 255 -> 0
    path.write_text("garbage")
    damaged = BdSeq(path)
    assert damaged.problem is not None
    assert 0 <= damaged.next() <= 255


def test_ddata_bytes_are_what_protobuf_writes() -> None:
    """The hand-written DDATA encoder against the generated module, every value kind."""
    reg = Registry("gw", "s")
    values: list[object] = [0.0, -1.5, 1e300, float("nan"), None, 0, 1, -1, 2**63 - 1,
                            -(2**63), 2**64 - 1, True, False, "", "on", "温度 °C", 127, 128,
                            300, 2**35]
    rs = [codec.Reading(seq, f"m{i}", v, None, 1_764_345_600_123 + i,
                        ("good", "uncertain", "bad")[i % 3])
          for i, v in enumerate(values) for seq in (1 + i, 2**40 + i)]
    reg.learn("d", rs)
    for historical in (False, True):
        fast = ddata.encode(reg.devices["d"], rs, 1_764_345_600_999, historical=historical)
        slow = reg.device_data_slow("d", rs, 1_764_345_600_999, historical=historical)
        assert fast == slow


_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c/d", "温度"]), _values,
                          st.integers(0, 2**64 - 1), st.integers(0, 2**63 - 1),
                          st.sampled_from(["good", "uncertain", "bad"])),
                min_size=1, max_size=30),
       st.booleans())
def test_ddata_fuzz_fast_equals_protobuf(rows: list[tuple[str, object, int, int, str]],
                                         historical: bool) -> None:
    reg = Registry("gw", "s")
    rs = [codec.Reading(seq, metric, value, None, ts, quality)
          for metric, value, seq, ts, quality in rows]
    reg.learn("d", rs)
    # values that do not fit the metric's (last) type go out as the codec sets them
    assert ddata.encode(reg.devices["d"], rs, 5, historical=historical) == \
        reg.device_data_slow("d", rs, 5, historical=historical)

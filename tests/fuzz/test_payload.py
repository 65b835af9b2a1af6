"""Readings -> ChunkEncoder -> the parkgate dialect's framing -> json.loads gives them back."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer import ChunkEncoder, group_chunks
from gateway.config import GatewaySection, MqttSection
from gateway.model import Reading
from gateway.uplink.dialects.parkgate import ParkgateDialect, ParkgateSession

NAMES = st.text(min_size=1, max_size=24)  # any Unicode: quotes, backslashes, controls, emoji
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
READINGS = st.builds(Reading, device=st.sampled_from(["m1", 'dev "2"', "パーク-3", "a\\b"]),
                     metric=NAMES, value=VALUES, ts=st.integers(0, 2**53),
                     unit=st.none() | NAMES,
                     quality=st.sampled_from(["good", "uncertain", "bad"]))


def _framing(gateway: str, site: str) -> ParkgateSession:
    """The native dialect's session, which frames stored items into a data message."""
    mqtt = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"]})
    return ParkgateDialect(mqtt, GatewaySection(id=gateway, site=site)).open(
        "mqtt://127.0.0.1", "fuzz")


@settings(max_examples=300, deadline=500, derandomize=True)
@given(st.lists(READINGS, min_size=1, max_size=40), st.integers(1, 2**40),
       st.integers(1, 7),
       st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
       st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True))
def test_payload_round_trip(readings: list[Reading], first: int, chunk_max: int,
                            gateway: str, site: str) -> None:
    enc = ChunkEncoder()
    session = _framing(gateway, site)
    seq = first
    for chunk in group_chunks(readings, chunk_max):
        # the uplink joins several chunk bodies of one device into one message
        body = enc.encode(seq, chunk)
        payload = session.frame(chunk[0].device, body.encode(), False).payload
        doc = json.loads(payload)  # strict JSON: NaN/Infinity would not be valid
        assert doc["v"] == 1 and doc["gateway"] == gateway and doc["site"] == site
        assert [r["seq"] for r in doc["readings"]] == list(range(seq, seq + len(chunk)))
        for r, got in zip(chunk, doc["readings"], strict=True):
            assert (got["device"], got["metric"], got["unit"], got["ts"]) == \
                (r.device, r.metric, r.unit, r.ts)
            v = r.value
            if isinstance(v, float) and not math.isfinite(v):
                assert got["value"] is None and got["quality"] == "bad"
                continue
            assert got["quality"] == r.quality
            assert got["value"] == v and type(got["value"]) is type(v), (v, got["value"])
        seq += len(chunk)


def test_nan_and_infinity_become_null_with_bad_quality() -> None:
    body = ChunkEncoder().encode(5, [Reading("d", "m", math.nan, 1),
                                     Reading("d", "m", -math.inf, 2),
                                     Reading("d", "m", 1.5, 3, "V", "uncertain")])
    items = json.loads(f"[{body}]")
    assert [(i["seq"], i["value"], i["quality"]) for i in items] == [
        (5, None, "bad"), (6, None, "bad"), (7, 1.5, "uncertain")]

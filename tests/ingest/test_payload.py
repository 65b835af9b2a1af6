"""classify(): data, status and drop notices told apart by payload; bad input rejected."""

from __future__ import annotations

import json

import pytest

from gateway.ingest.payload import Data, DropNotice, Rejected, Status, classify

R = {"seq": 7, "device": "m", "metric": "v", "value": 231.4, "unit": "V", "ts": 1764345600123,
     "quality": "good"}


def data(*readings: object) -> bytes:
    return json.dumps({"v": 1, "gateway": "gw", "site": "s", "readings": list(readings)}).encode()


def test_a_batch_as_the_uplink_writes_it_becomes_rows() -> None:
    msg = classify(b'{"v":1,"gateway":"gw","site":"s","readings":[' + json.dumps(R).encode()
                   + b"]}")
    assert msg == Data("gw", [("gw", 7, "s", "m", "v", 1764345600123, 231.4, None, "V", "good")],
                       [])


@pytest.mark.parametrize(("value", "num", "text"), [
    (3, 3.0, None), (None, None, None), (True, 1.0, "true"), (False, 0.0, "false"),
    ("on", None, "on"), ([1, 2], None, "[1,2]"),
])
def test_values_numeric_or_text(value: object, num: float | None, text: str | None) -> None:
    msg = classify(data({**R, "value": value}))
    assert isinstance(msg, Data)
    assert msg.rows[0][6:8] == (num, text)


@pytest.mark.parametrize(("change", "reason"), [
    ({"seq": None}, "seq"), ({"seq": 0}, "seq"), ({"seq": True}, "seq"), ({"seq": "7"}, "seq"),
    ({"ts": 1.5}, "ts"), ({"ts": -1}, "ts"), ({"device": ""}, "device"),
    ({"quality": "meh"}, "quality"),
])
def test_a_bad_reading_is_kept_aside_the_others_stay(change: dict[str, object],
                                                     reason: str) -> None:
    msg = classify(data({**R, **change}, {**R, "seq": 8}))
    assert isinstance(msg, Data)
    assert [r[1] for r in msg.rows] == [8]
    assert len(msg.bad) == 1 and reason in msg.bad[0][0]


def test_status_and_will_are_not_data() -> None:
    assert classify(b'{"state":"online","gateway":"gw","site":"s","ts":1}') == \
        Status("gw", "online")
    assert classify(b'{"state":"offline","reason":"connection lost","gateway":"gw"}') == \
        Status("gw", "offline")


def test_drop_notice() -> None:
    doc = {"v": 1, "gateway": "gw", "site": "s",
           "dropped": [{"first": 5, "last": 9, "reason": "max_bytes"}]}
    assert classify(json.dumps(doc).encode()) == DropNotice("gw", [(5, 9, "max_bytes")])
    doc["dropped"] = [{"first": 9, "last": 5, "reason": "max_bytes"}]
    assert isinstance(classify(json.dumps(doc).encode()), Rejected)


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"[1,2]", b'{"probe": 1}', b'{"readings": []}',
    b'{"gateway":"gw","site":"s","readings":{}}', b"NaN",
])
def test_anything_else_is_rejected_not_raised(payload: bytes) -> None:
    assert isinstance(classify(payload), Rejected)

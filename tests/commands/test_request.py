"""Requests: canonical form, parsing (a table of bad ones), staleness, replies; signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.commands.keys import parse_public_key
from gateway.commands.request import (
    BadRequest,
    Outcome,
    canonical_form,
    expiry_problem,
    load_document,
    parse_request,
    reply_doc,
)
from gateway.commands.signing import SignatureProblem, Signer, Verifier, keygen

GOOD = {"v": 1, "id": "7c1e2f0a", "ts": 1764345600123, "device": "boiler-plc",
        "action": "write", "point": "setpoint", "value": 21.5}


def test_canonical_form_is_sorted_compact_utf8_without_sig() -> None:
    doc = {"value": "Grüße", "v": 1, "sig": "xx", "id": "a b"}
    assert canonical_form(doc) == '{"id":"a b","v":1,"value":"Grüße"}'.encode()


def test_good_request_parses() -> None:
    req = parse_request(json.dumps(GOOD).encode())
    assert (req.id, req.device, req.action, req.point, req.value) == (
        "7c1e2f0a", "boiler-plc", "write", "setpoint", 21.5)
    assert req.sig is None
    assert req.canonical == canonical_form(GOOD)
    # extra keys are kept and signed
    extra = parse_request(json.dumps({**GOOD, "operator": "li"}).encode())
    assert b'"operator":"li"' in extra.canonical
    poll = parse_request(json.dumps({"v": 1, "id": "x", "ts": 1, "device": "d",
                                     "action": "poll"}).encode())
    assert poll.point is None


@pytest.mark.parametrize(("payload", "says"), [
    (b"\xff", "not UTF-8"),
    (b"{", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"v":1,"v":1}', "appears twice"),
    (b'{"v":1,"value":NaN}', "NaN is not a JSON number"),
    (b" " * 20000, "at most"),
    (json.dumps({**GOOD, "v": 2}).encode(), "version"),
    (json.dumps({**GOOD, "v": True}).encode(), "version"),
    (json.dumps({**GOOD, "id": ""}).encode(), "id must be"),
    (json.dumps({**GOOD, "id": "a b"}).encode(), "id must be"),
    (json.dumps({**GOOD, "ts": "now"}).encode(), "ts must be"),
    (json.dumps({**GOOD, "ts": True}).encode(), "ts must be"),
    (json.dumps({**GOOD, "device": "a/b"}).encode(), "device must be"),
    (json.dumps({**GOOD, "action": "reboot"}).encode(), "action must be one of"),
    (json.dumps({**GOOD, "point": None}).encode(), "needs the name of a point"),
    (json.dumps({**GOOD, "value": None}).encode(), "needs a value"),
    (json.dumps({**GOOD, "value": [1]}).encode(), "needs a value"),
    (json.dumps({**GOOD, "action": "poll"}).encode(), "takes no point"),
    (json.dumps({**GOOD, "action": "read"}).encode(), "takes no value"),
    (json.dumps({**GOOD, "sig": 5}).encode(), "sig must be"),
])
def test_bad_requests(payload: bytes, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        parse_request(payload)


def test_bad_request_keeps_what_it_could_read() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(json.dumps({**GOOD, "action": "reboot"}).encode())
    assert info.value.fields == {"id": "7c1e2f0a", "device": "boiler-plc",
                                 "action": "reboot", "point": "setpoint"}


@pytest.mark.parametrize(("ts", "now", "deadline", "says"), [
    (1000, 1000, None, None),
    (1000, 31_000, None, None),               # exactly max_age old
    (1000, 31_001, None, "30.0 s old"),
    (40_000, 10_000, None, None),             # exactly max_age ahead
    (40_000, 9_999, None, "30.0 s in the future"),
    (1000, 2000, 1999, "MQTT message expiry"),
    (1000, 2000, 2000, None),
])
def test_expiry(ts: int, now: int, deadline: int | None, says: str | None) -> None:
    problem = expiry_problem(ts, now, 30.0, deadline)
    assert (problem is None) if says is None else (says in (problem or ""))


def test_reply_document() -> None:
    fields = {"id": "a", "device": "d", "action": "write", "point": "p"}
    ok = reply_doc("gw", fields, Outcome("ok", value=21.5, has_value=True), 5)
    assert ok == {"v": 1, "id": "a", "gateway": "gw", "device": "d", "action": "write",
                  "point": "p", "status": "ok", "value": 21.5, "ts": 5}
    failed = Outcome("failed", "the device refused", code=2)
    dup = reply_doc("gw", fields, Outcome("duplicate", "seen"), 6, first=failed)
    assert dup["status"] == "duplicate" and "value" not in dup
    assert dup["first"] == {"status": "failed", "error": "the device refused", "code": 2}
    assert Outcome.from_json(failed.to_json()) == failed


def test_sign_and_verify(tmp_path: Path) -> None:
    pub, kid = keygen(tmp_path / "a.key")
    keygen(tmp_path / "b.key")
    signer = Signer.from_file(tmp_path / "a.key")
    other = Signer.from_file(tmp_path / "b.key")
    verifier = Verifier([parse_public_key((tmp_path / "b.pub").read_text()),
                         parse_public_key(pub.read_text())])
    msg = canonical_form(GOOD)
    assert verifier.verify(msg, signer.sign(msg)) == kid
    assert verifier.verify(msg, other.sign(msg)) == other.key_id
    changed = canonical_form({**GOOD, "value": 80})
    with pytest.raises(SignatureProblem, match="matches none"):
        verifier.verify(changed, signer.sign(msg))
    with pytest.raises(SignatureProblem, match="not signed"):
        verifier.verify(msg, None)
    with pytest.raises(SignatureProblem, match="not base64"):
        verifier.verify(msg, "%%%")
    with pytest.raises(SignatureProblem, match="64"):
        verifier.verify(msg, base64.b64encode(b"x" * 10).decode())
    only_b = Verifier([parse_public_key((tmp_path / "b.pub").read_text())])
    with pytest.raises(SignatureProblem, match="matches none"):
        only_b.verify(msg, signer.sign(msg))


def test_signer_refuses_other_files(tmp_path: Path) -> None:
    from gateway.errors import ConfigError

    keygen(tmp_path / "a.key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        Signer.from_file(tmp_path / "a.pub")
    with pytest.raises(ConfigError, match="cannot read"):
        Signer.from_file(tmp_path / "none.key")


_scalars = (st.none() | st.booleans() | st.integers(-2**53, 2**53)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10), _scalars, max_size=8),
       st.randoms(use_true_random=False), st.booleans())
def test_canonical_form_ignores_key_order_and_spacing(extra: dict[str, Any],
                                                      rnd: Any, ascii_only: bool) -> None:
    doc = {**extra, **GOOD}
    items = list(doc.items())
    rnd.shuffle(items)
    wire = json.dumps(dict(items), indent=rnd.choice([None, 1, 4]), ensure_ascii=ascii_only)
    assert canonical_form(load_document(wire.encode())) == canonical_form(doc)

"""`commands:` in the config file: keys, signing policy and topics, placed at their lines."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gateway.commands.keys import KeyProblem, key_id, parse_public_key, public_pem
from gateway.commands.signing import keygen
from gateway.config import ConfigProblems, parse_config

BASE = """\
gateway: {id: gw1, site: s1}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:1883"]
devices:
  - {name: boiler, driver: sim}
"""


def _problems(text: str, tmp: Path) -> list[str]:
    path = tmp / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigProblems) as info:
        parse_config(text, path)
    return [str(p).replace(str(path), "FILE") for p in info.value.problems]


def test_keygen_pair_parses_and_private_is_0600(tmp_path: Path) -> None:
    pub, kid = keygen(tmp_path / "op.key")
    assert pub == tmp_path / "op.pub"
    assert (tmp_path / "op.key").stat().st_mode & 0o777 == 0o600
    key = parse_public_key(pub.read_text())
    assert key.key_id == kid and len(kid) == 16
    with pytest.raises(FileExistsError):
        keygen(tmp_path / "op.key")  # never overwrites a key


def test_key_forms() -> None:
    priv = Ed25519PrivateKey.generate()
    raw = priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    pem = priv.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    der = priv.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert parse_public_key(pem.decode()).raw == raw
    assert parse_public_key(public_pem(raw)).raw == raw
    assert parse_public_key(base64.b64encode(raw).decode()).raw == raw
    assert parse_public_key(base64.b64encode(der).decode()).raw == raw
    assert parse_public_key(pem.decode()).key_id == key_id(raw)


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"),
    ("not base64!!", "neither PEM nor base64"),
    (base64.b64encode(b"x" * 31).decode(), "31 bytes"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA", "without its END"),
])
def test_bad_keys(text: str, says: str) -> None:
    with pytest.raises(KeyProblem, match=says):
        parse_public_key(text)


def test_private_and_rsa_keys_refused() -> None:
    priv = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                        NoEncryption()).decode()
    with pytest.raises(KeyProblem, match="PRIVATE key"):
        parse_public_key(priv)
    rsa = generate_private_key(65537, 1024).public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(KeyProblem, match="not an Ed25519"):
        parse_public_key(rsa)


def test_enabled_without_keys_is_an_error_at_its_line(tmp_path: Path) -> None:
    problems = _problems(BASE + "commands:\n  enabled: true\n", tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("FILE:8:12: commands.enabled: commands are enabled but no "
                                  "verify_keys")


def test_allow_unsigned_and_keys_together_is_an_error(tmp_path: Path) -> None:
    pub, _ = keygen(tmp_path / "op.key")
    text = BASE + textwrap.dedent(f"""\
        commands:
          enabled: true
          verify_keys: ["${{file:{pub}}}"]
          allow_unsigned: true
        """)
    problems = _problems(text, tmp_path)
    assert problems == ["FILE:10:19: commands.allow_unsigned: allow_unsigned: true next to "
                        "verify_keys would accept unsigned requests and make the keys "
                        "pointless: remove one of the two"]


def test_bad_key_file_is_named(tmp_path: Path) -> None:
    good, _ = keygen(tmp_path / "good.key")
    bad = tmp_path / "operator.pub"
    bad.write_text((tmp_path / "good.key").read_text())  # the private key, by mistake
    text = BASE + textwrap.dedent(f"""\
        commands:
          enabled: true
          verify_keys:
            - ${{file:{good}}}
            - ${{file:{bad}}}
            - ${{file:{tmp_path}/missing.pub}}
        """)
    problems = _problems(text, tmp_path)
    assert problems[0] == (f"FILE:11:7: commands.verify_keys.1: the key in {bad} is a PRIVATE "
                           "key: give the gateway the public key (the .pub file from parkgate "
                           "command keygen) and keep the private key with the operator")
    assert problems[1].startswith(f"FILE:12:7: commands.verify_keys.2: cannot read secret "
                                  f"file {tmp_path}/missing.pub")


def test_valid_section_parses_keys(tmp_path: Path) -> None:
    pub, kid = keygen(tmp_path / "op.key")
    text = BASE + f"commands:\n  enabled: true\n  verify_keys: ['${{file:{pub}}}']\n"
    loaded = parse_config(text, tmp_path / "c.yaml")
    cmds = loaded.config.commands
    assert cmds.enabled and cmds.max_age == 30.0
    assert [k.key_id for k in cmds.public_keys()] == [kid]
    assert cmds.topics("s1", "gw1") == ("parkgate/s1/gw1/cmd", "parkgate/s1/gw1/cmd/reply")
    assert not parse_config(BASE, tmp_path / "c.yaml").config.commands.enabled


def test_command_topic_cannot_be_a_data_topic(tmp_path: Path) -> None:
    text = BASE.replace("name: boiler", "name: cmd") + textwrap.dedent("""\
        commands:
          enabled: true
          allow_unsigned: true
        """)
    assert _problems(text, tmp_path) == [
        "FILE:8:3: commands.topic: parkgate/s1/gw1/cmd is also the data topic of device "
        "'cmd': choose another topic (or rename the device)"]


def test_command_topic_has_no_device(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent("""\
        commands:
          reply_topic: "parkgate/{device}/x"
          topic: "parkgate/{site}/{gateway}/cmd/reply"
        """)
    assert _problems(text, tmp_path) == [
        "FILE:8:16: commands.reply_topic: a command topic is per gateway: it may use {site} "
        "and {gateway}, not {device}"]
    text = BASE + "commands:\n  topic: a/b\n  reply_topic: a/b\n"
    assert _problems(text, tmp_path) == [
        "FILE:9:16: commands.reply_topic: the reply topic must differ from the command "
        "topic (the gateway would read its own replies)"]


def test_state_topic_cannot_be_a_data_topic(tmp_path: Path) -> None:
    text = BASE.replace('brokers: ["mqtt://127.0.0.1:1883"]',
                        'brokers: ["mqtt://127.0.0.1:1883"]\n'
                        '    device_state: true\n'
                        '    topic: "parkgate/{site}/{gateway}/status/{device}"')
    assert _problems(text, tmp_path) == [
        "FILE:6:12: uplink.mqtt.topic: parkgate/s1/gw1/status/boiler is both the data topic "
        "of device 'boiler' and the state topic of device 'boiler' (status_topic/DEVICE): "
        "choose another data topic or status_topic"]
    # without device_state nothing is published there: no collision
    parse_config(text.replace("device_state: true", "device_state: false"), tmp_path / "c.yaml")

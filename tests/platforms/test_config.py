"""Platform keys through `parkgate check`: every mistake at its line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigProblems, parse_config

BASE = """\
gateway: {{id: gw1, site: park}}
buffer: {{path: /tmp/x.db}}
uplink:
  mqtt:
    brokers: ["mqtts://iot.example:8883"]
    dialect: {dialect}
{section}
devices:
  - name: meter-1
    driver: sim
    interval: 1s
"""


def problems(dialect: str, section: str) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        parse_config(BASE.format(dialect=dialect, section=section), Path("c.yaml"))
    return [str(p) for p in info.value.problems]


def test_a_platform_dialect_needs_its_section() -> None:
    assert problems("aliyun", "") == [
        "c.yaml:5:5: uplink.mqtt.aliyun: dialect aliyun needs its keys under "
        "uplink.mqtt.aliyun (see config/aliyun.example.yaml)"]


def test_sub_devices_must_be_devices_and_keys_well_formed() -> None:
    section = """\
    aliyun:
      product_key: a1Gw
      device_name: gw-01
      device_secret: x-secret
      sub_product_key: a1Sub
      sub_devices:
        meter-2: {device_secret: s}
        meter-1: {device_secret: s}"""
    assert problems("aliyun", section) == [
        "c.yaml:13:9: uplink.mqtt.aliyun.sub_devices.meter-2: 'meter-2' is not the name "
        "of a device under devices: (did you mean meter-1?)"]
    bad = section.replace("meter-1: {device_secret: s}",
                          'meter-1: {device_secret: s, product_key: "no spaces"}')
    (line,) = problems("aliyun", bad)
    assert line.startswith("c.yaml:14:50: uplink.mqtt.aliyun.sub_devices.meter-1.product_key:")


def test_username_and_password_are_the_platform_s() -> None:
    section = """\
    username: someone
    huawei: {device_id: gw_1, secret: s, sub_product_id: p1}"""
    assert problems("huawei", section) == [
        "c.yaml:7:15: uplink.mqtt.username: dialect huawei signs its own credentials from "
        "uplink.mqtt.huawei: remove username"]


def test_a_section_of_another_dialect_is_a_mistake() -> None:
    section = "    thingsboard: {access_token: t}"
    out = problems("parkgate", section)
    assert out == ["c.yaml:7:18: uplink.mqtt.thingsboard: thingsboard: is set but the dialect "
                   "is parkgate: set dialect: thingsboard, or remove thingsboard:"]


def test_thingsboard_token_over_plain_mqtt_to_another_host_is_refused() -> None:
    text = BASE.format(dialect="thingsboard", section="    thingsboard: {access_token: t0k3n}")
    text = text.replace("mqtts://iot.example:8883", "mqtt://tb.example:1883")
    with pytest.raises(ConfigProblems) as info:
        parse_config(text, Path("c.yaml"))
    (line,) = [str(p) for p in info.value.problems]
    assert line.startswith("c.yaml:7:33: uplink.mqtt.thingsboard.access_token: the access "
                           "token would go unencrypted")


def test_secrets_from_files_are_known_to_the_log_masker(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("dev1ce-secret-value\n")
    section = f"""\
    huawei:
      device_id: gw_1
      secret: ${{file:{secret}}}
      sub_product_id: meterprod
      sub_devices: {{meter-1: {{}}}}"""
    loaded = parse_config(BASE.format(dialect="huawei", section=section), Path("c.yaml"))
    assert "dev1ce-secret-value" in loaded.secrets
    assert "dev1ce-secret-value" not in repr(loaded.config)


def test_platform_commands_need_the_commands_path() -> None:
    section = "    thingsboard: {access_token: t0k3n, commands: true}"
    out = problems("thingsboard", section)
    assert len(out) == 1 and out[0].startswith(
        "c.yaml:7:50: uplink.mqtt.thingsboard.commands: thingsboard commands go through the "
        "commands path: set commands: {enabled: true}"), out

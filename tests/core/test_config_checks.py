"""`topic_collisions`, a pure function since the config split: a table of cases."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Config
from gateway.config.checks import topic_collisions

CMD = {"enabled": True, "allow_unsigned": True}


def config(mqtt: dict[str, Any] | None = None, commands: dict[str, Any] | None = None) -> Config:
    return Config.model_validate({
        "gateway": {"id": "gw1", "site": "s1"},
        "uplink": {"mqtt": {"brokers": ["mqtts://h"], **(mqtt or {})}},
        "commands": commands or {},
    })


@pytest.mark.parametrize(("cfg", "devices", "expected"), [
    (config(commands=CMD), ["boiler", "chiller"], []),
    (config(), ["cmd"], []),  # commands off: no command topic to collide with
    (config(commands=CMD), ["cmd"], [
        (("commands", "topic"), "parkgate/s1/gw1/cmd is also the data topic of device 'cmd': "
                                "choose another topic (or rename the device)")]),
    (config(commands={**CMD, "reply_topic": "parkgate/{site}/{gateway}/status"}), ["a"], [
        (("commands", "reply_topic"), "parkgate/s1/gw1/status is also the status topic: "
                                      "choose another topic (or rename the device)")]),
    # a data topic without {device}: the first device named keeps it
    (config({"topic": "parkgate/{site}/{gateway}/cmd"}, CMD), ["a", "b"], [
        (("commands", "topic"), "parkgate/s1/gw1/cmd is also the data topic of device 'a': "
                                "choose another topic (or rename the device)")]),
    (config({"topic": "parkgate/{site}/{gateway}/status/{device}", "device_state": True}),
     ["a", "b"], [
        (("uplink", "mqtt", "topic"), "parkgate/s1/gw1/status/a is both the data topic of "
                                      "device 'a' and the state topic of device 'a' "
                                      "(status_topic/DEVICE): choose another data topic or "
                                      "status_topic")]),
    # device state off: status/DEVICE is only a data topic
    (config({"topic": "parkgate/{site}/{gateway}/status/{device}", "device_state": False}),
     ["a"], []),
])
def test_topic_collisions(cfg: Config, devices: list[str], expected: list[Any]) -> None:
    assert topic_collisions(cfg, devices) == expected

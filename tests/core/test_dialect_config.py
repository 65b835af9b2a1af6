"""`uplink.mqtt.dialect`: parkgate by default; sparkplug with its keys (tests/core/
test_sparkplug_config.py), the platforms with theirs (tests/platforms/test_config.py);
anything else refused with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewaySection, MqttSection
from gateway.uplink import dialects
from gateway.uplink.dialects.parkgate import ParkgateDialect
from tests.core.test_config_hardening import GOOD, check


def test_the_default_dialect_is_parkgate() -> None:
    cfg = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"]})
    assert cfg.dialect == "parkgate"
    assert isinstance(dialects.load(cfg, GatewaySection(id="g", site="s")), ParkgateDialect)


def test_device_states_are_opt_in_for_the_native_dialect_only() -> None:
    """An ACL written for the data and status topics refuses .../status/DEVICE, and a broker
    that disconnects on a refused publish would then never let data through
    (tests/core/test_uplink.py::test_refused_device_is_held_while_the_others_flow fails with
    the native default on); the other dialects' state messages are their platforms' own."""
    def mqtt(**keys: object) -> MqttSection:
        return MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1"], **keys})
    assert not mqtt().publishes_device_state
    assert mqtt(device_state=True).publishes_device_state
    assert mqtt(dialect="sparkplug", sparkplug={"group": "g"}).publishes_device_state
    assert not mqtt(dialect="sparkplug", sparkplug={"group": "g"},
                    device_state=False).publishes_device_state


@pytest.mark.parametrize("name", ["parkgate", "sparkplug", "Parkgate"])
def test_parkgate_passes_check_and_the_others_name_their_line(tmp_path: Path,
                                                                   name: str) -> None:
    path = tmp_path / "c.yaml"
    brokers = '["mqtt://127.0.0.1:1883"]'
    path.write_text(GOOD.replace(brokers, f"{brokers}\n    dialect: {name}"))
    ran = check(path)
    if name == "parkgate":
        assert ran.code == 0, ran
        return
    if name == "sparkplug":  # a known dialect, but its own keys are missing
        assert (ran.code, ran.lines()) == (2, [
            f"{path}:6:14: uplink.mqtt.dialect: dialect: sparkplug needs "
            "uplink.mqtt.sparkplug: {group: GROUP} (and optionally node, primary_host)"]), ran
        return
    assert (ran.code, ran.lines()) == (2, [
        f"{path}:6:14: uplink.mqtt.dialect: unknown dialect {name!r}: this version speaks "
        "parkgate, sparkplug, thingsboard, aliyun, huawei"]), ran

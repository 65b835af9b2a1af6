"""`uplink.mqtt.dialect`: parkgate by default, anything else refused with its line."""

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


def test_parkgate_may_be_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                '["mqtt://127.0.0.1:1883"]\n    dialect: parkgate'))
    ran = check(cfg)
    assert ran.code == 0, ran


@pytest.mark.parametrize("name", ["sparkplug", "Parkgate"])
def test_other_dialects_are_refused_with_their_line(tmp_path: Path, name: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                f'["mqtt://127.0.0.1:1883"]\n    dialect: {name}'))
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [
        f"{cfg}:6:14: uplink.mqtt.dialect: unknown dialect {name!r}: this version speaks "
        "parkgate (sparkplug, thingsboard, aliyun and huawei are planned, not yet "
        "available)"], ran

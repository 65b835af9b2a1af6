"""One module per wire dialect (gateway/uplink/dialect.py says what a dialect owns)."""

from __future__ import annotations

from pathlib import Path

from gateway.commands.config import CommandsSection
from gateway.config import GatewaySection, MqttSection
from gateway.uplink.dialect import Dialect


def load(cfg: MqttSection, gateway: GatewaySection, state_path: Path | None = None,
         commands: CommandsSection | None = None) -> Dialect:
    """The dialect `uplink.mqtt.dialect` names (validated by the config already);
    `state_path` (the buffer's path) places what a dialect keeps beside it; with `commands`
    enabled the native dialect subscribes to their topic and replies on theirs."""
    if cfg.dialect == "parkgate":
        from gateway.uplink.dialects.parkgate import ParkgateDialect  # noqa: PLC0415

        topics = (commands.topics(gateway.site, gateway.id) if commands is not None
                  and commands.enabled else (None, None))
        return ParkgateDialect(cfg, gateway, command_topic=topics[0], reply_topic=topics[1])
    if cfg.dialect == "sparkplug":
        # imports protobuf: only when chosen
        from gateway.uplink.dialects.sparkplug.dialect import SparkplugDialect  # noqa: PLC0415

        return SparkplugDialect(cfg, gateway, state_path)
    if cfg.dialect == "thingsboard":
        from gateway.uplink.dialects.thingsboard import ThingsboardDialect  # noqa: PLC0415

        return ThingsboardDialect(cfg, gateway)
    if cfg.dialect == "aliyun":
        from gateway.uplink.dialects.aliyun import AliyunDialect  # noqa: PLC0415

        return AliyunDialect(cfg, gateway)
    if cfg.dialect == "huawei":
        from gateway.uplink.dialects.huawei import HuaweiDialect  # noqa: PLC0415

        return HuaweiDialect(cfg, gateway)
    raise ValueError(f"unknown dialect {cfg.dialect!r}")

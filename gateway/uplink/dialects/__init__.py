"""One module per wire dialect (gateway/uplink/dialect.py says what a dialect owns)."""

from __future__ import annotations

from gateway.commands.config import CommandsSection
from gateway.config import GatewaySection, MqttSection
from gateway.uplink.dialect import Dialect


def load(cfg: MqttSection, gateway: GatewaySection,
         commands: CommandsSection | None = None) -> Dialect:
    """The dialect `uplink.mqtt.dialect` names (validated by the config already); with
    `commands` enabled it subscribes to their topic and replies on theirs."""
    topics = (commands.topics(gateway.site, gateway.id) if commands is not None
              and commands.enabled else (None, None))
    if cfg.dialect == "parkgate":
        from gateway.uplink.dialects.parkgate import ParkgateDialect  # noqa: PLC0415

        return ParkgateDialect(cfg, gateway, command_topic=topics[0], reply_topic=topics[1])
    raise ValueError(f"unknown dialect {cfg.dialect!r}")

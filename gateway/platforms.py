"""Config sections of the platform dialects: `uplink.mqtt.thingsboard|aliyun|huawei`.

Apart from gateway/config/ so that the dialects (gateway/uplink/dialects/) and the config
share these models without importing each other. Secrets are `SecretStr` (never in a repr)
and normally come from `${file:...}`, so the log masker knows them (gateway/redact.py).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from gateway.units import Duration

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.yamlpos import Loc

_ALINK_NAME = r"^[A-Za-z0-9_.:@-]{4,32}$"
"""Aliyun DeviceName: 4-32 characters of letters, digits and _ - . : @."""
_HUAWEI_ID = r"^[A-Za-z0-9_-]{1,128}$"
"""IoTDA device_id, node_id and product_id: letters, digits, _ and -."""

PLATFORM_DIALECTS = ("thingsboard", "aliyun", "huawei")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThingsboardSection(_Section):
    """ThingsBoard's gateway MQTT API (the device API for the gateway's own telemetry)."""

    access_token: SecretStr = Field(description=(
        "The gateway device's access token (the MQTT username); usually "
        "${file:/etc/parkgate/tb-token}."))
    gateway_devices: tuple[str, ...] = Field(default=(), description=(
        "Devices whose readings are the gateway's own telemetry (v1/devices/me/telemetry): "
        "the modem, the box itself. Every other device is a device behind the gateway."))
    device_type: str | None = Field(default=None, max_length=128, description=(
        "The device profile given in v1/gateway/connect (ThingsBoard's `type`); "
        "default: ThingsBoard's own default profile."))
    commands: bool = Field(default=False, description=(
        "Carry out server-side RPC from v1/gateway/rpc through the commands path (needs "
        "commands.enabled; unsigned, as ThingsBoard cannot sign: this is the allowance)."))


class AliyunSubDevice(_Section):
    """One sub-device of the gateway on Alibaba Cloud IoT Platform."""

    device_secret: SecretStr = Field(description="Its DeviceSecret (signs topo/add and login).")
    product_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,32}$", description=(
        "Its ProductKey; default: aliyun.sub_product_key."))
    device_name: str | None = Field(default=None, pattern=_ALINK_NAME, description=(
        "Its DeviceName on the platform; default: the parkgate device name."))


class AliyunSection(_Section):
    """Alibaba Cloud IoT Platform: the gateway's triple and its sub-devices."""

    product_key: str = Field(pattern=r"^[A-Za-z0-9]{1,32}$",
                             description="The gateway's ProductKey.")
    device_name: str = Field(pattern=_ALINK_NAME, description="The gateway's DeviceName.")
    device_secret: SecretStr = Field(description=(
        "The gateway's DeviceSecret; usually ${file:/etc/parkgate/aliyun-secret}."))
    client_id: str | None = Field(default=None, max_length=64, pattern=r"^[^|,=]+$",
                                  description="Default: {product_key}.{device_name}.")
    sign_method: Literal["hmacsha256", "hmacsha1"] = "hmacsha256"
    sub_product_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9]{1,32}$",
                                        description="ProductKey of sub-devices without one.")
    sub_devices: dict[str, AliyunSubDevice] = Field(default_factory=dict, description=(
        "parkgate device name -> its sub-device; devices not listed report as the "
        "gateway's own properties."))
    login_timeout: Duration = Field(default=10.0, gt=0, le=300.0, description=(
        "How long data waits after connecting for the platform's answer to the "
        "sub-devices' login (properties posted before it are refused in the reply topic "
        "and lost); without an answer by then data goes anyway, with a warning."))
    commands: bool = Field(default=False, description=(
        "Carry out thing/service/property/set and service calls (write, read, poll, "
        "sync_time) through the commands path (needs commands.enabled; unsigned: this "
        "is the allowance)."))

    @model_validator(mode="after")
    def _keys(self) -> AliyunSection:
        for name, sub in self.sub_devices.items():
            if sub.product_key is None and self.sub_product_key is None:
                raise ValueError(f"sub_devices.{name} has no product_key and there is no "
                                 "sub_product_key to default to")
            if sub.device_name is None and not re.match(_ALINK_NAME, name):
                raise ValueError(f"sub_devices.{name}: the name is not a valid Aliyun "
                                 "DeviceName (4-32 of A-Z a-z 0-9 _ - . : @): set device_name")
        return self

    def sub_triple(self, name: str) -> tuple[str, str, str]:
        """(product key, device name, secret) of the sub-device of parkgate device `name`."""
        sub = self.sub_devices[name]
        pk = sub.product_key or self.sub_product_key or ""
        return pk, sub.device_name or name, sub.device_secret.get_secret_value()


class HuaweiSubDevice(_Section):
    """One sub-device of the gateway on Huawei Cloud IoTDA."""

    node_id: str | None = Field(default=None, pattern=_HUAWEI_ID,
                                description="Default: the parkgate device name.")
    product_id: str | None = Field(default=None, pattern=_HUAWEI_ID,
                                   description="Default: huawei.sub_product_id.")
    device_id: str | None = Field(default=None, pattern=_HUAWEI_ID,
                                  description="Default: {product_id}_{node_id}.")
    name: str | None = Field(default=None, max_length=256,
                             description="Shown on the platform; default: the node id.")


class HuaweiSection(_Section):
    """Huawei Cloud IoTDA: the gateway's device id and secret, its sub-devices."""

    device_id: str = Field(pattern=_HUAWEI_ID, description="The gateway's device_id.")
    secret: SecretStr = Field(description=(
        "The gateway's secret; usually ${file:/etc/parkgate/iotda-secret}."))
    check_timestamp: bool = Field(default=True, description=(
        "Signature type 1 (the platform checks the timestamp) instead of 0."))
    service_id: str = Field(default="parkgate", pattern=r"^[A-Za-z0-9_$-]{1,64}$",
                            description="The product model's service that holds the metrics.")
    sub_product_id: str | None = Field(default=None, pattern=_HUAWEI_ID,
                                       description="product_id of sub-devices without one.")
    sub_devices: dict[str, HuaweiSubDevice] = Field(default_factory=dict, description=(
        "parkgate device name -> its sub-device; devices not listed report as the "
        "gateway's own properties."))
    add_sub_devices: bool = Field(default=True, description=(
        "Ask the platform to add the sub-devices on every connect (add_sub_device_request; "
        "already added ones are answered as such)."))
    add_timeout: Duration = Field(default=10.0, gt=0, le=300.0, description=(
        "How long data waits after connecting for the platform's answer to "
        "add_sub_device_request (reports of a sub-device not yet added are dropped); "
        "without an answer by then data goes anyway, with a warning."))
    commands: bool = Field(default=False, description=(
        "Carry out platform commands and property sets through the commands path (needs "
        "commands.enabled; unsigned: this is the allowance)."))

    @model_validator(mode="after")
    def _ids(self) -> HuaweiSection:
        for name, sub in self.sub_devices.items():
            if sub.device_id is None and sub.product_id is None and not self.sub_product_id:
                raise ValueError(f"sub_devices.{name} has neither device_id nor product_id "
                                 "and there is no sub_product_id to default to")
            if sub.node_id is None and not re.match(_HUAWEI_ID, name):
                raise ValueError(f"sub_devices.{name}: the name is not a valid node id: "
                                 "set node_id")
        return self

    def sub_ids(self, name: str) -> tuple[str, str, str]:
        """(device id, node id, product id) of the sub-device of parkgate device `name`."""
        sub = self.sub_devices[name]
        node = sub.node_id or name
        product = sub.product_id or self.sub_product_id or ""
        return sub.device_id or f"{product}_{node}", node, product


def platform_problems(config: Config, devices: Collection[str]
                      ) -> list[tuple[Loc, str, bool]]:
    """What the config's platform section names that is not there: devices that are not
    under `devices:`, commands without the commands path. (location, message, at the key)"""
    mqtt = config.uplink.mqtt
    listed: list[tuple[Loc, str]] = []
    if mqtt.thingsboard is not None:
        listed += [(("uplink", "mqtt", "thingsboard", "gateway_devices", i), name)
                   for i, name in enumerate(mqtt.thingsboard.gateway_devices)]
    for section, key in ((mqtt.aliyun, "aliyun"), (mqtt.huawei, "huawei")):
        if section is not None:
            listed += [(("uplink", "mqtt", key, "sub_devices", name), name)
                       for name in section.sub_devices]
    out: list[tuple[Loc, str, bool]] = []
    for loc, name in listed:
        if name not in devices:
            close = difflib.get_close_matches(name, sorted(devices), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            out.append((loc, f"{name!r} is not the name of a device under devices:{hint}",
                        loc[-2] == "sub_devices"))
    section = getattr(mqtt, mqtt.dialect, None) if mqtt.dialect in PLATFORM_DIALECTS else None
    commands = getattr(config, "commands", None)
    if section is not None and section.commands and (commands is None or not commands.enabled):
        out.append((("uplink", "mqtt", mqtt.dialect, "commands"),
                    (f"{mqtt.dialect} commands go through the commands path: set "
                    "commands: {enabled: true} (the points' write: blocks decide what may be "
                    "written)"), False))
    return out

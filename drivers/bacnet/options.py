"""Options of `driver: bacnet`: where the device is, the gateway's BACnet port, the objects."""

from __future__ import annotations

import importlib.util
import ipaddress
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.driver import DeviceOptions, StrictModel, WriteLimits
from gateway.units import Duration

from .objects import ObjectRef

DEFAULT_PORT = 47808
GATEWAY_INSTANCE = 4_194_000
"""The gateway's own BACnet device instance unless `network.device_id` says otherwise."""


STACK_MISSING = ("the BACnet driver needs bacpypes3, which is not installed: "
                 "pip install 'parkgate[bacnet]'")


def stack_installed() -> bool:
    """Whether bacpypes3 can be imported (checked without importing it)."""
    return importlib.util.find_spec("bacpypes3") is not None


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    try:
        ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: write an IPv4 address, optionally with :PORT, such "
                         f"as 192.168.20.31 or 192.168.20.31:{default_port}") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{text!r}: port {number} is outside 1..65535")
    return host, number


def device_address(text: str) -> str:
    """A device's address, normalized: `IP[:PORT]` on the gateway's subnet, or behind a
    BACnet router `NET:IP[:PORT]` (BACnet/IP network NET) or `NET:MAC` (MS/TP, MAC 0-254)."""
    net, sep, rest = text.partition(":")
    if sep and net.isdigit() and ("." in rest or rest.isdigit()):
        number = int(net)
        if not 1 <= number <= 65534:
            raise ValueError(f"{text!r}: network number {number} is outside 1..65534")
        if rest.isdigit():
            mac = int(rest)
            if mac > 254:
                raise ValueError(f"{text!r}: an MS/TP MAC address is 0..254")
            return f"{number}:{mac}"
        host, port = _host_port(rest, DEFAULT_PORT)
        return f"{number}:{host}:{port}"
    try:
        host, port = _host_port(text, DEFAULT_PORT)
    except ValueError:
        raise ValueError(f"{text!r}: write the device's IPv4 address[:PORT] (192.168.20.31), "
                         "or behind a BACnet router NET:IP[:PORT] (2001:10.30.1.20) or "
                         "NET:MAC for MS/TP (3001:12)") from None
    return f"{host}:{port}"


def is_routed(address: str) -> bool:
    """Whether a normalized device address is behind a router (NET:...)."""
    return "." not in address.partition(":")[0]


class ForeignDevice(StrictModel):
    """Register with a BBMD as a foreign device, to reach devices on other subnets."""

    bbmd: str = Field(description="The BBMD's IPv4 address[:port] (port 47808 by default).")
    ttl: Duration = Field(default=300.0, ge=30, le=65535, description=(
        "Registration lifetime; re-registered before it ends."))

    @field_validator("bbmd")
    @classmethod
    def _bbmd(cls, value: str) -> str:
        host, port = _host_port(value, DEFAULT_PORT)
        return f"{host}:{port}"


class Network(StrictModel):
    """The gateway's own BACnet/IP port, one per gateway, shared by every BACnet device.

    Every device that names the same `port` must give the same settings (the driver says
    which differ).
    """

    address: str = Field(default="0.0.0.0", description=(  # noqa: S104 - a gateway listens
        "Local IPv4 address to bind, with /PREFIX to allow local broadcasts "
        "(192.168.20.5/24); 0.0.0.0 takes any interface."))
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535, description=(
        "UDP port of the gateway's BACnet stack (47808 = 0xBAC0 by default)."))
    device_id: int = Field(default=GATEWAY_INSTANCE, ge=0, le=4_194_302, description=(
        "The gateway's own device instance on the BACnet network (must be unique there)."))
    foreign: ForeignDevice | None = Field(default=None, description=(
        "Register with a BBMD as a foreign device (devices on other subnets)."))

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.IPv4Interface(value)
        except ValueError:
            raise ValueError(f"{value!r}: write a local IPv4 address, optionally with "
                             "/PREFIX, such as 192.168.20.5/24 or 0.0.0.0") from None
        return value


class ObjectSpec(StrictModel):
    """One object of the device, read (and maybe written) as one metric."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$",
                      description="Metric name of this object's present-value.")
    object: str = Field(description="TYPE,INSTANCE such as analog-input,1.")
    unit: str | None = Field(default=None, description=(
        "Unit string; default: the object's own `units` property (read once)."))
    cov: bool | None = Field(default=None, description=(
        "Subscribe to change-of-value (default: the device's `cov` setting)."))
    priority: int | None = Field(default=None, ge=1, le=16, description=(
        "Priority of writes to this object (default: the device's `priority`, 8)."))
    write: WriteLimits | None = Field(default=None, description=(
        "Makes present-value writable within these limits; absent: never written."))

    @field_validator("object")
    @classmethod
    def _object(cls, value: str) -> str:
        return str(ObjectRef.parse(value))

    @model_validator(mode="after")
    def _writable(self) -> ObjectSpec:
        ref = ObjectRef.parse(self.object)
        if self.write is not None and not ref.commandable:
            raise ValueError(f"write: {ref.type} objects are not commandable; only outputs "
                             "and values (analog-value, binary-output, ...) take writes")
        if self.priority is not None and self.write is None:
            raise ValueError("priority: only writable objects (with a `write:` block) "
                             "use a priority")
        return self

    @property
    def ref(self) -> ObjectRef:
        """The object's type and instance."""
        return ObjectRef.parse(self.object)


class BacnetOptions(DeviceOptions):
    """Options of `driver: bacnet`."""

    driver: Literal["bacnet"] = "bacnet"
    address: str = Field(description=(
        "The device's IPv4 address[:port] (port 47808 by default); behind a BACnet router "
        "NET:IP[:PORT] or NET:MAC (MS/TP)."))
    device_id: int | None = Field(default=None, ge=0, le=4_194_302, description=(
        "The device's instance number: checked with Who-Is at start when given."))
    network: Network = Field(default_factory=Network, description=(
        "The gateway's BACnet port (shared by all BACnet devices)."))
    objects: list[ObjectSpec] = Field(min_length=1, description="Objects to read.")
    cov: bool = Field(default=True, description=(
        "Subscribe to change-of-value where the device supports it, poll where not."))
    cov_lifetime: Duration = Field(default=300.0, ge=10, le=86_400, description=(
        "Lifetime asked for COV subscriptions; each is renewed before it ends."))
    rpm: bool = Field(default=True, description=(
        "Batch reads with ReadPropertyMultiple (falls back by itself where unsupported)."))
    max_per_request: int = Field(default=16, ge=1, le=200, description=(
        "Most objects one ReadPropertyMultiple asks for."))
    request_timeout: Duration = Field(default=2.0, gt=0,
                                      description="Longest wait for one answer.")
    retries: int = Field(default=1, ge=0, le=5,
                         description="Extra attempts after a request got no answer.")
    priority: int = Field(default=8, ge=1, le=16, description=(
        "Default priority of writes (8 = manual operator, 16 = lowest)."))

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return device_address(value)

    @model_validator(mode="after")
    def _unique(self) -> BacnetOptions:
        if not stack_installed():
            raise ValueError(STACK_MISSING)
        n = self.network
        if is_routed(self.address) and "/" not in n.address and n.foreign is None:
            raise ValueError(f"address {self.address}: a device behind a router is found with "
                             "Who-Is-Router-To-Network, a broadcast: give network.address "
                             "with its /PREFIX, such as 192.168.20.5/24")
        seen: dict[str, str] = {}
        objects: dict[str, str] = {}
        for spec in self.objects:
            if spec.name in seen:
                raise ValueError(f"objects: name {spec.name!r} is used twice")
            seen[spec.name] = spec.object
            if spec.object in objects:
                raise ValueError(f"objects: {spec.object} is read twice ({objects[spec.object]}"
                                 f" and {spec.name})")
            objects[spec.object] = spec.name
        return self

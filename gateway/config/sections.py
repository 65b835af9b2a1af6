"""The config file's sections: pydantic models, frozen, unknown keys refused.

`Config` is the validated file; each driver's options model validates its own devices
(load.py), and the value checks the models use live in checks.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.commands.config import CommandsSection
from gateway.config.checks import (
    broker_url_problem,
    is_loopback_url,
    publish_topic_problem,
    sparkplug_id_problem,
)
from gateway.driver import DeviceOptions
from gateway.platforms import (
    PLATFORM_DIALECTS,
    AliyunSection,
    HuaweiSection,
    ThingsboardSection,
)
from gateway.units import Duration, Size


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    """Who this gateway is."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                    description="Unique per gateway; the platform de-duplicates by (id, seq).")
    site: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                      description="The park this gateway belongs to.")


class BufferSection(_Section):
    """The durable SQLite buffer."""

    path: Path = Field(default=Path("/var/lib/parkgate/buffer.db"))
    max_bytes: Size = Field(default=512 * 2**20, ge=64 * 2**10,
                            description="Oldest readings are dropped (and counted) beyond this.")
    max_age: Duration | None = Field(default=None, description="Drop readings older than this.")
    commit_interval: Duration = Field(default=0.15, ge=0.005, le=5.0,
                                      description="Longest a reading waits in memory.")
    commit_readings: int = Field(default=20_000, ge=1,
                                 description="Commit early once this many readings wait.")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="full: a commit survives power loss; normal: faster, may lose the last "
                    "commits on power loss (never corrupts).")


class TlsSection(_Section):
    """TLS for `mqtts://` brokers."""

    ca: Path | None = Field(default=None, description="CA bundle; system CAs when omitted.")
    cert: Path | None = Field(default=None, description="Client certificate (PEM).")
    key: Path | None = Field(default=None, description="Client private key (PEM).")
    verify: bool = Field(default=True, description="Set false only for lab brokers.")
    server_name: str | None = Field(default=None, description="Override the SNI/host check.")


class BatchSection(_Section):
    """How readings are grouped into MQTT messages."""

    max_readings: int = Field(default=500, ge=1, le=10_000)
    max_delay: Duration = Field(default=1.0, ge=0.0, le=60.0)


DIALECTS = ("parkgate", "sparkplug", *PLATFORM_DIALECTS)
"""Values of `uplink.mqtt.dialect` (gateway/uplink/dialects/)."""


def _checked(value: str, problem_of: Callable[[str], str | None]) -> str:
    """`value`, or a ValueError with what `problem_of` finds wrong with it."""
    problem = problem_of(value)
    if problem:
        raise ValueError(problem)
    return value


class SparkplugSection(_Section):
    """`dialect: sparkplug`: the Sparkplug B 3.0 edge node's identity (README "Sparkplug")."""

    group: str = Field(max_length=128, description="The Sparkplug group id (no + # /).")
    node: str | None = Field(
        default=None, max_length=128,
        description="The edge node id (no + # /); default: gateway.id.")
    primary_host: str | None = Field(
        default=None, max_length=128,
        description="The primary host application id: data is published only while "
                    "spBv1.0/STATE/{primary_host} says online, else it stays buffered.")
    allow_unsigned_dcmd: bool = Field(
        default=False,
        description="Carry out DCMD writes that carry no signature (a metric property "
                    "`sig`); commands.enabled and the point's write: block still apply.")

    @field_validator("group", "node", "primary_host")
    @classmethod
    def _ids(cls, value: str | None) -> str | None:
        return None if value is None else _checked(value, sparkplug_id_problem)


class MqttSection(_Section):
    """The MQTT uplink."""

    brokers: list[str] = Field(min_length=1, description="Tried in order; failover on error.")
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(
        default=None,
        description="Default: parkgate-{site}-{gateway}-{suffix}, the suffix kept next to "
                    "the buffer (one session per install).")
    protocol: Literal["3.1.1", "5"] = "5"
    tls: TlsSection = Field(default_factory=TlsSection)
    topic: str = "parkgate/{site}/{gateway}/{device}"
    status_topic: str = "parkgate/{site}/{gateway}/status"
    device_state: bool | None = Field(
        default=None,
        description="Publish each device's state when it changes: native dialect, retained "
                    "on {status_topic}/{device} (up, or down with the last error kind, since "
                    "when); Sparkplug, DBIRTH/DDEATH; ThingsBoard, connect/disconnect; "
                    "Aliyun, sub-device login/logout; Huawei, ONLINE/OFFLINE. Default: on "
                    "for all but parkgate (the broker's ACL must allow those topics; a broker that "
                    "disconnects on a refused publish would otherwise reconnect forever).")

    @property
    def publishes_device_state(self) -> bool:
        """`device_state`, or the dialect's default."""
        return self.device_state if self.device_state is not None else \
            self.dialect != "parkgate"
    qos: Literal[1] = Field(default=1, description="QoS 1: at-least-once delivery.")
    dialect: str = Field(
        default="parkgate",
        description="What goes on the wire: parkgate (the native JSON), sparkplug "
                    "(Sparkplug B 3.0), thingsboard, aliyun or huawei (each with its "
                    "keys under its own name).")
    sparkplug: SparkplugSection | None = None
    thingsboard: ThingsboardSection | None = None
    aliyun: AliyunSection | None = None
    huawei: HuaweiSection | None = None
    batch: BatchSection = Field(default_factory=BatchSection)
    max_message_bytes: Size = Field(
        default=128_000, ge=512, le=268_435_455,
        description="Largest MQTT PUBLISH packet (topic, headers and payload) to send; "
                    "batches are split to fit. An MQTT 5 broker's own maximum packet size "
                    "applies when smaller. Default 128000: AWS IoT and other cloud "
                    "platforms cap messages at 128-256 KB.")
    window: int = Field(default=16, ge=1, le=1000, description="Publishes in flight at once.")
    live_share: float = Field(
        default=0.25, ge=0.0, le=1.0,
        description="Share of the window kept for fresh readings while a backlog drains.")
    keepalive: Duration = Field(default=30.0, ge=5.0, le=3600.0)
    connect_timeout: Duration = Field(default=10.0, gt=0)
    publish_timeout: Duration = Field(default=30.0, gt=0,
                                      description="PUBACK later than this: reconnect.")
    backoff_max: Duration = Field(
        default=15.0, ge=1.0,
        description="Longest wait between reconnect rounds: caps the handshake backoff "
                    "(full jitter below it) and the TCP probe interval of a long outage; "
                    "bad credentials wait this long at once.")

    allow_plaintext_password: bool = Field(
        default=False,
        description="Send the password over plain mqtt:// to a broker that is not on this "
                    "host. Off: such a config is refused (anyone on the path reads it).")

    @field_validator("brokers")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            _checked(url, broker_url_problem)
        return urls

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, name: str) -> str:
        if name not in DIALECTS:
            raise ValueError(f"unknown dialect {name!r}: this version speaks "
                             f"{', '.join(DIALECTS)}")
        return name

    @field_validator("topic", "status_topic")
    @classmethod
    def _template(cls, topic: str) -> str:
        return _checked(topic, publish_topic_problem)

    @model_validator(mode="after")
    def _dialect_keys(self) -> MqttSection:
        if self.dialect == "sparkplug" and self.sparkplug is None:
            raise _error(("dialect",), "dialect: sparkplug needs uplink.mqtt.sparkplug: "
                         "{group: GROUP} (and optionally node, primary_host)")
        if self.dialect != "sparkplug" and self.sparkplug is not None:
            raise _error(("sparkplug", "group"), f"uplink.mqtt.sparkplug is set but the "
                         f"dialect is {self.dialect}, so it would be ignored: set "
                         "dialect: sparkplug, or remove sparkplug:")
        return self

    @model_validator(mode="after")
    def _platform(self) -> MqttSection:
        for name in PLATFORM_DIALECTS:
            given = getattr(self, name) is not None
            if name == self.dialect and not given:
                raise _error((name,), f"dialect {name} needs its keys under "
                             f"uplink.mqtt.{name} (see config/{name}.example.yaml)")
            if given and name != self.dialect:
                raise _error((name,), f"{name}: is set but the dialect is {self.dialect}: "
                             f"set dialect: {name}, or remove {name}:")
        if self.dialect in PLATFORM_DIALECTS:
            for key in ("username", "password"):
                if key in self.model_fields_set:
                    raise _error((key,), f"dialect {self.dialect} signs its own "
                                 f"credentials from uplink.mqtt.{self.dialect}: remove "
                                 f"{key}")
        return self

    @model_validator(mode="after")
    def _plaintext(self) -> MqttSection:
        plain = [url for url in self.brokers if url.startswith("mqtt://")]
        if not plain:
            return self
        if self.tls.model_fields_set:
            raise _error(("tls", next(iter(sorted(self.tls.model_fields_set)))),
                         f"tls: is set but {plain[0]} is plain mqtt://, so it would not be "
                         "used and the password and readings would go unencrypted: write "
                         "mqtts://HOST:8883 (or remove tls:)")
        remote = [url for url in plain if not is_loopback_url(url)]
        if self.thingsboard is not None and remote and not self.allow_plaintext_password:
            raise _error(("thingsboard", "access_token"),
                         f"the access token would go unencrypted to {remote[0]}: use "
                         "mqtts://, or set allow_plaintext_password: true if the network "
                         "path is trusted")
        if self.password is not None and remote and not self.allow_plaintext_password:
            raise _error(("password",),
                         f"the password would go unencrypted to {remote[0]}: use "
                         "mqtts://, or set allow_plaintext_password: true if the network "
                         "path is trusted")
        return self


def _error(loc: tuple[str, ...], message: str) -> ValidationError:
    """A validation error at `loc` inside the model being validated (not at the model)."""
    return ValidationError.from_exception_data("config", [InitErrorDetails(
        type=PydanticCustomError("config", message), loc=loc, input=None)])


class UplinkSection(_Section):
    """Where readings go."""

    mqtt: MqttSection


class MetricsSection(_Section):
    """The HTTP endpoint for /metrics, /healthz and /readyz."""

    listen: str | None = Field(default="127.0.0.1:9881",
                               description="HOST:PORT, or null to serve nothing.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$", value):
            raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:9881)")
        return value


class LoggingSection(_Section):
    """Log level and format."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise.")


class AgentSection(_Section):
    """Agent-wide behaviour."""

    shutdown_grace: Duration = Field(default=5.0, ge=0.0, le=300.0,
                                     description="How long to keep publishing on SIGTERM.")


class Config(_Section):
    """A validated config file. `devices` holds each driver's own options model."""

    gateway: GatewaySection
    buffer: BufferSection = Field(default_factory=BufferSection)
    uplink: UplinkSection
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    agent: AgentSection = Field(default_factory=AgentSection)
    commands: CommandsSection = Field(default_factory=CommandsSection)
    devices: tuple[DeviceOptions, ...] = ()


# no docstring: it would become the description at the top of `parkgate schema`
class RawConfig(Config):  # `Config` with each device as read: its driver's model validates it
    devices: tuple[Any, ...] = ()

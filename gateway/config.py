"""The config file: YAML with line numbers -> secrets substituted -> pydantic models.

Every problem is reported at once, each as a `Problem` with the file, line and column of
the offending key or value, so `parkgate check` can print `FILE:LINE:COL: path: message`.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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
from gateway.driver import DeviceOptions, DriverInfo, discover_drivers
from gateway.errors import ConfigError
from gateway.platforms import (
    PLATFORM_DIALECTS,
    AliyunSection,
    HuaweiSection,
    ThingsboardSection,
    platform_problems,
)
from gateway.redact import Masker
from gateway.substitute import Substituter
from gateway.units import Duration, Size
from gateway.yamlload import YamlProblem, load_yaml
from gateway.yamlpos import Loc, Positions


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


def sparkplug_id_problem(value: str) -> str | None:
    """Why `value` cannot be a Sparkplug group, edge node or host id, or None."""
    if not value:
        return "must not be empty"
    bad = sorted({c for c in value if c in "+#/"})
    if bad:
        return f"{value!r} contains {' '.join(bad)}: Sparkplug ids cannot contain + # /"
    return None


def _sparkplug_id(value: str) -> str:
    problem = sparkplug_id_problem(value)
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
        return None if value is None else _sparkplug_id(value)


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
            problem = broker_url_problem(url)
            if problem:
                raise ValueError(problem)
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
        problem = publish_topic_problem(topic)
        if problem:
            raise ValueError(problem)
        return topic

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
        remote = [url for url in plain if not _loopback(url)]
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


_BROKER = re.compile(r"(mqtts?)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?/?")


def broker_url_problem(url: str) -> str | None:
    """Why `url` is not `mqtt[s]://HOST[:PORT]`, or None. Never echoes credentials."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        shown = f"{scheme}://***@{rest.split('/', 1)[0].rsplit('@', 1)[1]}"
        return (f"{shown}: credentials in a broker URL are not used (and would show in "
                "/metrics, /readyz and the status message): put them in uplink.mqtt.username "
                "and password (password: ${file:/etc/parkgate/mqtt-password} keeps it out of "
                "this file)")
    m = _BROKER.fullmatch(url)
    if not m or not 1 <= int(m.group(3) or 1883) <= 65535:
        return f"{url!r} is not a broker URL: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    return None


def _loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOPIC_MAX_BYTES = 65_535
"""MQTT's limit on a topic name, in UTF-8 bytes."""
NAME_MAX = 64
_PLACEHOLDERS = frozenset({"site", "gateway", "device"})
"""Longest gateway id, site and device name: what `{gateway}`, `{site}`, `{device}` add."""


def publish_topic_problem(template: str) -> str | None:
    """Why no broker would take a topic made from `template`, or None.

    MQTT 3.1.1/5: UTF-8 without U+0000 (brokers refuse control characters and
    noncharacters too), 1 to 65,535 bytes, no wildcards in a publish topic; `$` topics are
    the broker's own. Checked with every placeholder at its longest.
    """
    try:
        # a format spec such as {device:>99999999} would build a string of that size
        for _text, name, spec, conversion in string.Formatter().parse(template):
            if name is not None and (name not in _PLACEHOLDERS or spec or conversion):
                raise ValueError(f"'{{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}'")
        longest = template.format(site="s" * NAME_MAX, gateway="g" * NAME_MAX,
                                  device="d" * NAME_MAX)
    except (KeyError, IndexError, ValueError) as exc:
        return f"topic template may use only {{site}}, {{gateway}} and {{device}} ({exc})"
    if not template:
        return "a topic cannot be empty"
    if "+" in template or "#" in template:
        return "a topic to publish to cannot contain the wildcards + or #"
    if template.startswith("$"):
        return "topics starting with $ belong to the broker ($SYS/...): choose another"
    for char in template:
        code = ord(char)
        if code == 0:
            return "a topic cannot contain a NUL character (U+0000): no broker accepts it"
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"a topic cannot contain the control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return f"a topic must be UTF-8 text: U+{code:04X} is half a surrogate pair"
        if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE:
            return f"a topic cannot contain the noncharacter U+{code:04X}"
    size = len(longest.encode("utf-8"))
    if size > TOPIC_MAX_BYTES:
        return (f"topic is {size:,} bytes with {{site}}, {{gateway}} and {{device}} at their "
                f"longest ({NAME_MAX} characters); MQTT allows {TOPIC_MAX_BYTES:,}")
    return None


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


class _RawConfig(Config):
    devices: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        # one problem is one line whatever a key, a value or a parser message holds, and no
        # character of the file reaches the terminal as a control sequence (ESC, BEL, ...)
        return (f"{printable(self.file)}:{self.line}:{self.col}: {printable(self.path)}: "
                f"{printable(self.message)}")


def printable(text: str) -> str:
    """`text` with every control, format and line-separator character escaped the way
    Python writes it in a string literal (\\n, \\x1b, \\u2028)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] if char in "\t\n\r"
                   else ascii(char)[1:-1] for char in text)


class ConfigProblems(ConfigError):
    """A config file with one or more problems; `str()` lists them one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config plus what was learnt loading it."""

    config: Config
    path: Path
    secrets: frozenset[str] = field(default_factory=frozenset)
    """Values substituted from ${ENV} or ${file:...}, for log redaction."""


# --- YAML with positions ------------------------------------------------------------------

MAX_CONFIG_BYTES = 4 * 2**20
"""A config file larger than this is refused before parsing (100 devices x 100 inline
registers are 0.7 MiB)."""

# --- validation ---------------------------------------------------------------------------

def _friendly(err: Mapping[str, Any], model_fields: list[str]) -> str:
    kind = err.get("type", "")
    loc = err.get("loc", ())
    if kind == "extra_forbidden" and loc:
        key = str(loc[-1])
        close = difflib.get_close_matches(key, model_fields, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the model found at `loc` (for did-you-mean hints)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type)
                                         and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            break
        annotation = info.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next((c for c in candidates if isinstance(c, type)
                        and issubclass(c, BaseModel)), None)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


MAX_PROBLEMS = 100
"""Problems listed in full; past them a file is not worth reading further (and a machine-made
file with 35,000 misspelt keys would cost seconds of did-you-mean searches)."""


class Reporter:
    """Collects `Problem`s for one file: placed by position (found only when needed),
    secrets masked, at most MAX_PROBLEMS listed."""

    def __init__(self, file: str, positions: Callable[[], Positions] | None = None) -> None:
        self.file = file
        self.find_positions = positions
        self.positions: Positions | None = None
        self.problems: list[Problem] = []
        self.mask = Masker()
        self.unlisted = 0

    @property
    def full(self) -> bool:
        """MAX_PROBLEMS listed: count the rest, do not place or explain them."""
        return len(self.problems) >= MAX_PROBLEMS

    def result(self) -> ConfigProblems:
        """The problems in file order, and a last line when some were not listed."""
        problems = sorted(self.problems, key=lambda p: (p.line, p.col))
        if self.full:
            more = f"{self.unlisted:,} more problems" if self.unlisted else "more problems"
            problems.append(Problem(self.file, 1, 1, "(file)",
                                    f"{more} not listed after the first {MAX_PROBLEMS}: fix "
                                    "these and check again"))
        return ConfigProblems(problems)

    def where(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        if self.positions is None and self.find_positions is not None:
            self.positions = self.find_positions()  # only a file with problems pays for them
        found = self.positions.find(loc, key=key) if self.positions else None
        return found or (1, 1)

    def add(self, loc: Loc, message: str, *, key: bool = False) -> None:
        if self.full:
            self.unlisted += 1
            return
        line, col = self.where(loc, key=key)
        path = ".".join(str(p) for p in loc) or "(top)"
        # messages may echo a value (in a repr, too); never a substituted secret
        self.problems.append(Problem(self.file, line, col, self.mask(path), self.mask(message)))

    def add_validation(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        for err in exc.errors(include_url=False, include_input=False):
            if self.full:
                self.unlisted += 1
                continue
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(
                "function-")))
            parent = loc[:-1] if loc else ()
            fields = _fields_at(model, parent) if err["type"] == "extra_forbidden" else []
            if err["type"] == "missing":
                # point at the mapping that lacks the key, not at its first child
                line, col = self.where((*prefix, *parent), key=True)
                path = ".".join(str(p) for p in (*prefix, *loc))
                self.problems.append(Problem(self.file, line, col, self.mask(path),
                                             "required key is missing"))
                continue
            self.add((*prefix, *loc), _friendly(err, fields),
                     key=err["type"] == "extra_forbidden")


def yaml_problem(path: Path, text: str, exc: YamlProblem) -> ConfigProblems:
    """A YAML syntax or limit error as the one problem of its file."""
    message = exc.message
    lines = text.splitlines()
    if "syntax error" in message and 0 < exc.line <= len(lines) and "${" in lines[exc.line - 1]:
        message += (" (inside {...} or [...], put quotes around a value that uses "
                    '${...}, as in "${NAME}")')
    return ConfigProblems([Problem(str(path), exc.line, exc.col, "(yaml)", message)])


def read_document(text: str, path: Path) -> tuple[Any, Reporter, Substituter]:
    """Parse a config text, bounded, with `${...}` substituted: the document, a reporter
    that places problems and masks the secrets, and the substituter (its problems, secrets)."""
    subst = Substituter()
    try:
        doc, _ = load_yaml(text, scalars=subst, positions=False)
    except YamlProblem as exc:
        raise yaml_problem(path, text, exc) from None
    # the same structure again, with positions and without reading secrets a second time,
    # only when a problem needs placing
    rep = Reporter(str(path), lambda: load_yaml(text)[1])
    rep.mask = Masker(subst.secrets)
    return doc, rep, subst


def parse_config(text: str, path: Path, drivers: Mapping[str, DriverInfo] | None = None
                 ) -> LoadedConfig:
    """Validate config `text` (read from `path`); raise `ConfigProblems` listing everything."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)", f"larger than "
                                      f"{MAX_CONFIG_BYTES // 2**20} MiB: not a config file?")])
    doc, rep, subst = read_document(text, path)
    if doc is None:
        rep.add((), "the file is empty: start from config/example.yaml")
        raise ConfigProblems(rep.problems)
    if not isinstance(doc, dict):
        rep.add((), "the top level must be a mapping with gateway:, uplink: and devices:")
        raise ConfigProblems(rep.problems)
    for loc, msg in subst.problems:
        rep.add(loc, msg)

    raw: _RawConfig | None = None
    try:
        # the files substituted, so a validator can name the one with a bad value in it
        raw = _RawConfig.model_validate(doc, context={"sources": subst.sources})
    except ValidationError as exc:
        rep.add_validation(exc, (), Config)

    raw_devices = doc.get("devices", [])
    devices = _validate_devices(raw_devices, rep, drivers)
    if raw is not None:
        for loc, message, key in platform_problems(raw, {d.name for d in devices}):
            rep.add(loc, message, key=key)
        _topic_collisions(raw, devices, rep)
    del doc, raw_devices  # the YAML tree and any positions go once validated
    rep.positions = rep.find_positions = None

    if rep.problems or raw is None:
        raise rep.result()
    # every part is validated already: assemble, do not validate (or dump) again
    sections = {name: getattr(raw, name) for name in Config.model_fields if name != "devices"}
    config = Config.model_construct(raw.model_fields_set | {"devices"}, **sections,
                                    devices=tuple(devices))
    return LoadedConfig(config=config, path=path, secrets=frozenset(subst.secrets))


def _topic_collisions(raw: Config, devices: list[DeviceOptions], rep: Reporter) -> None:
    """A command, reply or device state topic that is also a device's data topic or the
    status topic (a data template of another depth, a device named `cmd`)."""
    site, gw = raw.gateway.site, raw.gateway.id
    mqtt = raw.uplink.mqtt
    status = mqtt.status_topic.format(site=site, gateway=gw)
    taken = {status: "the status topic"}
    for d in devices:
        taken.setdefault(mqtt.topic.format(site=site, gateway=gw, device=d.name),
                         f"the data topic of device '{d.name}'")
    for d in devices if mqtt.device_state and mqtt.dialect == "parkgate" else ():
        state = f"{status}/{d.name}"  # retained device state (the parkgate dialect)
        if state in taken:
            rep.add(("uplink", "mqtt", "topic"), f"{state} is both {taken[state]} and the "
                    f"state topic of device '{d.name}' (status_topic/DEVICE): choose "
                    "another data topic or status_topic")
            break
    cmds = raw.commands
    if not cmds.enabled:
        return
    for key, topic in zip(("topic", "reply_topic"), cmds.topics(site, gw), strict=True):
        if topic in taken:
            rep.add(("commands", key), f"{topic} is also {taken[topic]}: choose another "
                                       "topic (or rename the device)")


def _validate_devices(raw_devices: Any, rep: Reporter,
                      drivers: Mapping[str, DriverInfo] | None) -> list[DeviceOptions]:
    if not isinstance(raw_devices, list):
        return []  # the top-level validation already reported the wrong type
    available = drivers if drivers is not None else discover_drivers()
    seen: dict[str, int] = {}
    out: list[DeviceOptions] = []
    for i, dev in enumerate(raw_devices):
        loc: Loc = ("devices", i)
        if rep.full:
            break  # the rest is not listed anyway: `result()` says there is more
        if not isinstance(dev, dict):
            continue  # reported by the top-level model as a wrong type
        name = dev.get("name")
        if isinstance(name, str):
            if name in seen:
                rep.add((*loc, "name"), f"duplicate device name '{name}' "
                                        f"(also devices.{seen[name]})")
            else:
                seen[name] = i
        driver = dev.get("driver")
        if not isinstance(driver, str):
            rep.add((*loc, "driver"), "required key is missing: which driver reads this device "
                                      f"({', '.join(sorted(available))})")
            continue
        info = available.get(driver)
        if info is None:
            close = difflib.get_close_matches(driver, list(available), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            rep.add((*loc, "driver"), f"unknown driver '{driver}': {hint}installed drivers are "
                                      f"{', '.join(sorted(available))}")
            continue
        if info.cls is None:
            rep.add((*loc, "driver"), f"driver '{driver}' is installed but failed to load: "
                                      f"{info.error}")
            continue
        try:
            out.append(info.cls.Options.model_validate(dev))
        except ValidationError as exc:
            rep.add_validation(exc, loc, info.cls.Options)
    return out


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of a config file, refused (as a `ConfigProblems`) when it is not a regular
    file of at most `limit` bytes of UTF-8."""

    def problem(message: str, line: int = 1, col: int = 1) -> ConfigProblems:
        return ConfigProblems([Problem(str(path), line, col, "(file)", message)])

    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise problem("not a regular file")
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise problem("file not found") from None
    except OSError as exc:
        raise problem(f"cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise problem(f"larger than {limit // 2**20} MiB: not a config file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8", "replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise problem(f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line, col) from None


def load_config(path: Path, drivers: Mapping[str, DriverInfo] | None = None) -> LoadedConfig:
    """Read and validate the config file at `path`.

    Raises `ConfigProblems` and nothing else: an error nobody foresaw while loading
    (MemoryError included) becomes one problem line, so a reload keeps the running config
    and a start exits 2 with FILE:LINE:COL.
    """
    try:
        return parse_config(read_config_text(path), path, drivers)
    except ConfigProblems:
        raise
    except Exception as exc:  # whatever else fails here is a problem of this file
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)",
                                      f"cannot load: {type(exc).__name__}: {exc}")]) from exc


def json_schema(drivers: Mapping[str, DriverInfo] | None = None) -> dict[str, Any]:
    """JSON Schema of the config file, with every loadable driver's options."""
    available = drivers if drivers is not None else discover_drivers()
    schema = _RawConfig.model_json_schema(mode="validation")
    schema["title"] = "parkgate configuration"
    defs = schema.setdefault("$defs", {})
    variants = []
    for name, info in sorted(available.items()):
        if info.cls is None:
            continue
        sub = info.cls.Options.model_json_schema(mode="validation",
                                                 ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        key = f"driver_{name}"
        sub["properties"]["driver"] = {"const": name}
        defs[key] = sub
        variants.append({"$ref": f"#/$defs/{key}"})
    schema["properties"]["devices"] = {"type": "array", "items": {"oneOf": variants},
                                       "description": "The devices to read."}
    schema.setdefault("required", [])
    return schema

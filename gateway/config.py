"""The config file: YAML with line numbers -> secrets substituted -> pydantic models.

Every problem is reported at once, each as a `Problem` with the file, line and column of
the offending key or value, so `parkgate check` can print `FILE:LINE:COL: path: message`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError

from gateway.driver import DeviceOptions, DriverInfo, discover_drivers
from gateway.errors import ConfigError
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


class MqttSection(_Section):
    """The MQTT uplink."""

    brokers: list[str] = Field(min_length=1, description="Tried in order; failover on error.")
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(default=None, description="Default: parkgate-{gateway}.")
    protocol: Literal["3.1.1", "5"] = "5"
    tls: TlsSection = Field(default_factory=TlsSection)
    topic: str = "parkgate/{site}/{gateway}/{device}"
    status_topic: str = "parkgate/{site}/{gateway}/status"
    qos: Literal[1] = Field(default=1, description="QoS 1: at-least-once delivery.")
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
        description="Longest wait between reconnect rounds (full jitter below it); bad "
                    "credentials wait this long at once.")

    @field_validator("brokers")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^mqtts?://[^/:\s]+(:\d{1,5})?/?$", url):
                raise ValueError(
                    f"{url!r} is not a broker URL: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return urls

    @field_validator("topic", "status_topic")
    @classmethod
    def _template(cls, topic: str) -> str:
        try:
            topic.format(site="s", gateway="g", device="d")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"topic template may use only {{site}}, {{gateway}} and {{device}} ({exc})"
            ) from None
        if "+" in topic or "#" in topic:
            raise ValueError("a topic to publish to cannot contain the wildcards + or #")
        return topic


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
        # one problem is one line, whatever a key or a parser message contains
        path = self.path.replace("\r", "\\r").replace("\n", "\\n")
        message = " ".join(self.message.split())
        return f"{self.file}:{self.line}:{self.col}: {path}: {message}"


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

Loc = tuple[str | int, ...]


def _positions(node: Any, loc: Loc, out: dict[Loc, tuple[int, int]]) -> None:
    """Map every path in the YAML tree to its (line, col), 1-based."""
    if isinstance(node, CommentedMap):
        for key in node:
            kline, kcol = node.lc.key(key)
            vline, vcol = node.lc.value(key)
            out[(*loc, str(key), "<key>")] = (kline + 1, kcol + 1)
            out[(*loc, str(key))] = (vline + 1, vcol + 1)
            _positions(node[key], (*loc, str(key)), out)
    elif isinstance(node, CommentedSeq):
        for i, item in enumerate(node):
            line, col = node.lc.item(i)
            out[(*loc, i)] = (line + 1, col + 1)
            _positions(item, (*loc, i), out)


_SUBST = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _substitute(node: Any, loc: Loc, problems: list[tuple[Loc, str]], secrets: set[str]) -> Any:
    """Replace ${ENV}, ${ENV:-default} and ${file:/path} in string scalars; `$$` is `$`."""
    if isinstance(node, dict):
        for key in list(node):
            node[key] = _substitute(node[key], (*loc, str(key)), problems, secrets)
        return node
    if isinstance(node, list):
        for i, item in enumerate(node):
            node[i] = _substitute(item, (*loc, i), problems, secrets)
        return node
    if not isinstance(node, str) or "$" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group(1)
        if expr.startswith("file:"):
            path = Path(expr[5:])
            try:
                value = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                problems.append((loc, f"cannot read secret file {path}: {exc.strerror}"))
                return ""
        else:
            name, _, default = expr.partition(":-")
            if not _ENV_NAME.match(name):
                message = f"${{{expr}}} is not ${{NAME}}, ${{NAME:-default}} or ${{file:/path}}"
                problems.append((loc, message))
                return ""
            env = os.environ.get(name)
            if env is None and ":-" not in expr:
                problems.append((loc, f"environment variable {name} is not set"))
                return ""
            value = env if env is not None else default
        if value:
            secrets.add(value)
        return value

    return _SUBST.sub(repl, node)


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


class _Reporter:
    def __init__(self, file: str, positions: dict[Loc, tuple[int, int]]) -> None:
        self.file = file
        self.positions = positions
        self.problems: list[Problem] = []
        self.secrets: set[str] = set()

    def where(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        if key and (*loc, "<key>") in self.positions:
            return self.positions[(*loc, "<key>")]
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.positions:
                return self.positions[loc[:n]]
        return (1, 1)

    def add(self, loc: Loc, message: str, *, key: bool = False) -> None:
        line, col = self.where(loc, key=key)
        path = ".".join(str(p) for p in loc) or "(top)"
        for secret in self.secrets:  # messages may echo a value; never a substituted secret
            message = message.replace(secret, "***")
        self.problems.append(Problem(self.file, line, col, path, message))

    def add_validation(self, exc: ValidationError, prefix: Loc, model: type[BaseModel]) -> None:
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(
                "function-")))
            parent = loc[:-1] if loc else ()
            fields = _fields_at(model, parent) if err["type"] == "extra_forbidden" else []
            if err["type"] == "missing":
                # point at the mapping that lacks the key, not at its first child
                line, col = self.where((*prefix, *parent), key=True)
                path = ".".join(str(p) for p in (*prefix, *loc))
                self.problems.append(Problem(self.file, line, col, path,
                                             "required key is missing"))
                continue
            self.add((*prefix, *loc), _friendly(err, fields),
                     key=err["type"] == "extra_forbidden")


def _load_yaml(path: Path, text: str) -> tuple[Any, dict[Loc, tuple[int, int]]]:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        lines = text.splitlines()
        if mark and mark.line < len(lines) and "${" in lines[mark.line]:
            what += (" (inside {...} or [...], put quotes around a value that uses "
                     '${...}, as in "${NAME}")')
        raise ConfigProblems([Problem(str(path), line, col, "(yaml)",
                                      f"YAML syntax error: {what}")]) from None
    except ReaderError as exc:  # a character YAML does not allow (NUL, other controls)
        pos = max(0, min(int(exc.position), len(text)))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character
        code = char if isinstance(char, int) else ord(str(char)[:1] or "\0")
        raise ConfigProblems([Problem(str(path), line, col, "(yaml)",
                                      f"character U+{code:04X} is not allowed in a YAML file "
                                      "(a binary or corrupted file?)")]) from None
    except Exception as exc:  # noqa: BLE001 - ruamel raises a wide variety; report, don't crash
        raise ConfigProblems([Problem(str(path), 1, 1, "(yaml)",
                                      f"cannot parse YAML: {exc}")]) from None
    positions: dict[Loc, tuple[int, int]] = {}
    _positions(doc, (), positions)
    return doc, positions


def parse_config(text: str, path: Path, drivers: Mapping[str, DriverInfo] | None = None
                 ) -> LoadedConfig:
    """Validate config `text` (read from `path`); raise `ConfigProblems` listing everything."""
    doc, positions = _load_yaml(path, text)
    rep = _Reporter(str(path), positions)
    if doc is None:
        rep.add((), "the file is empty: start from config/example.yaml")
        raise ConfigProblems(rep.problems)
    if not isinstance(doc, dict):
        rep.add((), "the top level must be a mapping with gateway:, uplink: and devices:")
        raise ConfigProblems(rep.problems)

    subst_problems: list[tuple[Loc, str]] = []
    secrets: set[str] = set()
    _substitute(doc, (), subst_problems, secrets)
    rep.secrets = secrets
    for loc, msg in subst_problems:
        rep.add(loc, msg)

    raw: _RawConfig | None = None
    try:
        raw = _RawConfig.model_validate(doc)
    except ValidationError as exc:
        rep.add_validation(exc, (), Config)

    raw_devices = doc.get("devices", [])
    devices = _validate_devices(raw_devices, rep, drivers)

    if rep.problems or raw is None:
        raise ConfigProblems(sorted(rep.problems, key=lambda p: (p.line, p.col)))
    config = Config.model_validate({**raw.model_dump(exclude={"devices"}), "devices": devices})
    return LoadedConfig(config=config, path=path, secrets=frozenset(secrets))


def _validate_devices(raw_devices: Any, rep: _Reporter,
                      drivers: Mapping[str, DriverInfo] | None) -> list[DeviceOptions]:
    if not isinstance(raw_devices, list):
        return []  # the top-level validation already reported the wrong type
    available = drivers if drivers is not None else discover_drivers()
    seen: dict[str, int] = {}
    out: list[DeviceOptions] = []
    for i, dev in enumerate(raw_devices):
        loc: Loc = ("devices", i)
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


def load_config(path: Path, drivers: Mapping[str, DriverInfo] | None = None) -> LoadedConfig:
    """Read and validate the config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)",
                                      "file not found")]) from None
    except OSError as exc:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)",
                                      f"cannot read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)",
                                      "not UTF-8 text")]) from None
    return parse_config(text, path, drivers)


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

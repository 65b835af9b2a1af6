"""The ingest's YAML file: the same `FILE:LINE:COL: path: message` problems as the agent's.

The agent's loader (gateway/config.py) validates the agent's model only; this module keeps
its own small YAML-with-positions reader so the two files evolve apart, and reuses the
agent's public pieces: `Problem`, `ConfigProblems` and the TLS, metrics and logging sections.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from gateway.config import ConfigProblems, LoggingSection, MetricsSection, Problem, TlsSection
from gateway.units import Duration

Loc = tuple[str | int, ...]
INGEST_KEYS = frozenset({"source", "sink"})
"""Top-level keys that make a YAML file an ingest config rather than an agent config."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSection(_Section):
    """Where the agents publish: one connection per broker, one shared subscription each."""

    brokers: list[str] = Field(min_length=1, description="Every broker is consumed at once.")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSection = Field(default_factory=TlsSection)
    topic: str = Field(default="parkgate/+/+/+", description="Subscribed as $share/{share}/...")
    share: str = Field(default="parkgate-ingest", pattern=r"^[^/+#\s]+$",
                       description="Shared subscription group; all ingest processes use one.")
    client_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Stable per process (a restart resumes its persistent session); "
                    "default parkgate-ingest-{hostname}, `--instance N` appends -N.")
    session_expiry: Duration = Field(
        default=3600.0, ge=0.0, le=86400.0 * 7,
        description="How long the broker keeps this process's unacknowledged messages.")
    receive_maximum: int = Field(default=1000, ge=1, le=65535,
                                 description="Unacknowledged messages the broker may send.")
    keepalive: Duration = Field(default=30.0, ge=5.0, le=3600.0)
    connect_timeout: Duration = Field(default=10.0, gt=0)
    backoff_max: Duration = Field(default=15.0, ge=1.0)

    @field_validator("brokers")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not re.match(r"^mqtts?://[^/:\s]+(:\d{1,5})?/?$", url):
                raise ValueError(
                    f"{url!r} is not a broker URL: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        return urls

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        if topic.startswith("$share/"):
            raise ValueError("write the plain topic filter; the ingest adds $share/{share}/")
        if not topic or any(("#" in p and p != "#") or ("+" in p and p != "+")
                            for p in topic.split("/")):
            raise ValueError(f"{topic!r} is not a valid MQTT topic filter")
        return topic


class SinkSection(_Section):
    """The PostgreSQL database and table."""

    postgres: SecretStr = Field(description="libpq URL or key=value string.")
    table: str = Field(default="readings", pattern=r"^[a-z_][a-z0-9_]{0,40}$",
                       description="Created and migrated by the ingest.")
    db_schema: str = Field(default="public", alias="schema",
                           pattern=r"^[a-z_][a-z0-9_]{0,40}$")
    batch_rows: int = Field(default=5000, ge=1, le=200_000,
                            description="Commit once this many readings wait.")
    batch_delay: Duration = Field(default=0.2, ge=0.0, le=10.0,
                                  description="Longest a message waits for its commit.")
    timescale: bool = Field(default=True,
                            description="Make the table a hypertable when the extension exists.")
    statement_timeout: Duration = Field(default=30.0, gt=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GapsSection(_Section):
    """Seqs that did not arrive."""

    after: Duration = Field(default=300.0, ge=0.0,
                            description="A gap both of whose edges arrived longer ago than "
                                        "this is reported as missing.")
    interval: Duration = Field(default=15.0, ge=0.1, le=3600.0,
                               description="How often the table is checked for gaps.")


class IngestConfig(_Section):
    """A validated ingest config file."""

    source: SourceSection
    sink: SinkSection
    gaps: GapsSection = Field(default_factory=GapsSection)
    metrics: MetricsSection = Field(
        default_factory=lambda: MetricsSection(listen="127.0.0.1:9882"))
    logging: LoggingSection = Field(default_factory=LoggingSection)


@dataclass(frozen=True, slots=True)
class LoadedIngestConfig:
    """A config plus the secret values substituted into it (for log redaction)."""

    config: IngestConfig
    path: Path
    secrets: frozenset[str]


def is_ingest_document(text: str) -> bool:
    """Whether a YAML text looks like an ingest config (top-level `source:` or `sink:`)."""
    try:
        doc = YAML(typ="safe").load(text)
    except (YAMLError, ValueError):
        return False
    return isinstance(doc, dict) and bool(INGEST_KEYS & set(map(str, doc)))


def _positions(node: Any, loc: Loc, out: dict[Loc, tuple[int, int]]) -> None:
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


def _substitute(node: Any, loc: Loc, problems: list[tuple[Loc, str]], secrets: set[str]) -> Any:
    """${ENV}, ${ENV:-default}, ${file:/path} and `$$`, exactly as in the agent's file."""
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
            try:
                value = Path(expr[5:]).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                problems.append((loc, f"cannot read secret file {expr[5:]}: {exc.strerror}"))
                return ""
        else:
            name, _, default = expr.partition(":-")
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                bad = f"${{{expr}}} is not ${{NAME}}, ${{NAME:-default}} or ${{file:/path}}"
                problems.append((loc, bad))
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


def _where(positions: Mapping[Loc, tuple[int, int]], loc: Loc, *, key: bool) -> tuple[int, int]:
    if key and (*loc, "<key>") in positions:
        return positions[(*loc, "<key>")]
    for n in range(len(loc), 0, -1):
        if loc[:n] in positions:
            return positions[loc[:n]]
    return (1, 1)


def _fields(loc: Loc) -> list[str]:
    model: Any = IngestConfig
    for part in loc:
        info = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if info is None:
            return []
        model = info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def parse_ingest_config(text: str, path: Path) -> LoadedIngestConfig:
    """Validate an ingest config; raise `ConfigProblems` listing every problem."""
    file = str(path)
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigProblems([Problem(file, line, col, "(yaml)",
                                      f"YAML syntax error: {what}")]) from None
    except (YAMLError, ValueError) as exc:
        raise ConfigProblems([Problem(file, 1, 1, "(yaml)", f"cannot parse YAML: {exc}")]
                             ) from None
    if not isinstance(doc, dict):
        raise ConfigProblems([Problem(file, 1, 1, "(top)",
                                      "the top level must be a mapping with source: and sink:"
                                      " (see config/ingest.example.yaml)")])
    positions: dict[Loc, tuple[int, int]] = {}
    _positions(doc, (), positions)
    subst: list[tuple[Loc, str]] = []
    secrets: set[str] = set()
    _substitute(doc, (), subst, secrets)
    problems: list[Problem] = []

    def add(loc: Loc, message: str, *, key: bool = False) -> None:
        line, col = _where(positions, loc, key=key)
        for secret in secrets:
            message = message.replace(secret, "***")
        problems.append(Problem(file, line, col, ".".join(map(str, loc)) or "(top)", message))

    for loc, message in subst:
        add(loc, message)
    config: IngestConfig | None = None
    try:
        config = IngestConfig.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            loc = tuple(err["loc"])
            kind = err["type"]
            if kind == "extra_forbidden":
                close = difflib.get_close_matches(str(loc[-1]), _fields(loc[:-1]), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                add(loc, f"unknown key '{loc[-1]}'{hint}", key=True)
            elif kind == "missing":
                line, col = _where(positions, loc[:-1], key=True)
                problems.append(Problem(file, line, col, ".".join(map(str, loc)),
                                        "required key is missing"))
            else:
                add(loc, str(err["msg"]).removeprefix("Value error, "))
    if problems or config is None:
        raise ConfigProblems(sorted(problems, key=lambda p: (p.line, p.col)))
    return LoadedIngestConfig(config, path, frozenset(secrets))


def load_ingest_config(path: Path) -> LoadedIngestConfig:
    """Read and validate the ingest config file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigProblems([Problem(str(path), 1, 1, "(file)", f"cannot read: {exc}")]
                             ) from None
    return parse_ingest_config(text, path)

"""The ingest's YAML file: the same `FILE:LINE:COL: path: message` problems as the agent's.

The model is the ingest's own; the reading is the agent's (gateway/config/, yamlload.py,
substitute.py): one bounded YAML reader, one `${...}` substitution, one reporter, so a
hostile file costs the ingest's `check` no more than the agent's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway.config import (
    LoggingSection,
    MetricsSection,
    TlsSection,
    read_config_text,
    read_document,
)
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


_TOP_KEY = re.compile(r"^[\"']?(source|sink)[\"']?[ \t]*:", re.MULTILINE)


def is_ingest_document(text: str) -> bool:
    """Whether a YAML text looks like an ingest config: a top-level `source:` or `sink:`.

    A line scan, not a parse: `check` runs it on every file before the agent's bounded
    loader, so it must cost nothing whatever the file holds (aliases, size).
    """
    return _TOP_KEY.search(text) is not None


def parse_ingest_config(text: str, path: Path) -> LoadedIngestConfig:
    """Validate an ingest config; raise `ConfigProblems` listing every problem.

    The agent's loader does the reading: the same bounds on size, aliases and nesting, the
    same `${...}` substitution (secret files bounded, read once) and the same masking.
    """
    doc, rep, subst = read_document(text, path)
    if not isinstance(doc, dict):
        rep.add((), "the top level must be a mapping with source: and sink: "
                    "(see config/ingest.example.yaml)")
        raise rep.result()
    for loc, message in subst.problems:
        rep.add(loc, message)
    config: IngestConfig | None = None
    try:
        config = IngestConfig.model_validate(doc)
    except ValidationError as exc:
        rep.add_validation(exc, (), IngestConfig)
    if rep.problems or config is None:
        raise rep.result()
    return LoadedIngestConfig(config, path, frozenset(subst.secrets))


def load_ingest_config(path: Path) -> LoadedIngestConfig:
    """Read and validate the ingest config file at `path` (bounded as the agent's file)."""
    return parse_ingest_config(read_config_text(path), path)

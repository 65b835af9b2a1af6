"""The top-level `commands:` section of the config file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as _ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.commands.keys import KeyProblem, PublicKey, parse_public_key
from gateway.units import Duration

DEFAULT_TOPIC = "parkgate/{site}/{gateway}/cmd"
DEFAULT_REPLY_TOPIC = "parkgate/{site}/{gateway}/cmd/reply"


def _errors(items: Sequence[tuple[tuple[str | int, ...], str]]) -> _ValidationError:
    """Problems at locations inside the model being validated."""
    return _ValidationError.from_exception_data("commands", [InitErrorDetails(
        type=PydanticCustomError("config", message), loc=loc, input=None)
        for loc, message in items])


def _topic_problem(template: str) -> str | None:
    from gateway.config import publish_topic_problem  # noqa: PLC0415 - config imports us

    if "{device}" in template:
        return "a command topic is per gateway: it may use {site} and {gateway}, not {device}"
    return publish_topic_problem(template)


class CommandsSection(BaseModel):
    """Commands from upstream: off unless enabled; signed unless explicitly allowed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Subscribe to the command topic and "
                          "carry out requests (only on points with a write: block).")
    topic: str = Field(default=DEFAULT_TOPIC, description="Where requests arrive (QoS 1).")
    reply_topic: str = Field(default=DEFAULT_REPLY_TOPIC, description=(
        "Where replies go, unless a (signed) request names an MQTT 5 response topic."))
    max_age: Duration = Field(default=30.0, gt=0, le=86_400, description=(
        "Requests older than this (by their ts) are answered expired, never executed; "
        "also those whose ts is this far in the future (clocks apart)."))
    verify_keys: tuple[str, ...] = Field(default=(), description=(
        "Ed25519 public keys (PEM or raw base64) whose signatures are accepted; "
        "usually ${file:/etc/parkgate/operator.pub}."))
    allow_unsigned: bool = Field(default=False, description=(
        "Accept requests without a signature; required when verify_keys is empty. Anyone "
        "who may publish on the broker can then write to devices."))
    session_expiry: Duration = Field(default=3600.0, ge=0, le=2**32 - 1, description=(
        "How long the broker keeps the gateway's MQTT session while it is away, queueing "
        "requests (answered, or expired, when it is back); 0: a clean session."))
    timeout: Duration | None = Field(default=None, gt=0, description=(
        "Longest one command may take at the device; default twice the device's timeout "
        "(a write and its read-back)."))

    @field_validator("topic", "reply_topic")
    @classmethod
    def _topics(cls, value: str) -> str:
        problem = _topic_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("verify_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        sources: Mapping[tuple[Any, ...], list[str]] = (info.context or {}).get("sources", {})
        problems = []
        for i, text in enumerate(keys):
            try:
                parse_public_key(text)
            except KeyProblem as exc:
                files = [f for loc, names in sources.items()
                         if loc[-2:] == ("verify_keys", i) for f in names]
                what = f"the key in {', '.join(files)}" if files else "this key"
                problems.append(((i,), f"{what} {exc}"))
        if problems:
            raise _errors(problems)
        return keys

    @model_validator(mode="after")
    def _signed(self) -> CommandsSection:
        if self.allow_unsigned and self.verify_keys:
            raise _errors([(("allow_unsigned",), (
                "allow_unsigned: true next to verify_keys would accept unsigned requests "
                "and make the keys pointless: remove one of the two"))])
        if self.enabled and not self.verify_keys and not self.allow_unsigned:
            raise _errors([(("enabled",), (
                "commands are enabled but no verify_keys are given: add the operator's "
                "public key (parkgate command keygen writes a pair), or set "
                "allow_unsigned: true to let anyone who may publish on the broker write "
                "to devices"))])
        if self.topic == self.reply_topic:
            raise _errors([(("reply_topic",), ("the reply topic must differ from the "
                            "command topic (the gateway would read its own replies)"))])
        return self

    def public_keys(self) -> tuple[PublicKey, ...]:
        """The verify keys, parsed (validated already when the config was loaded)."""
        return tuple(parse_public_key(k) for k in self.verify_keys)

    def topics(self, site: str, gateway: str) -> tuple[str, str]:
        """The command and reply topics of this gateway."""
        return (self.topic.format(site=site, gateway=gateway),
                self.reply_topic.format(site=site, gateway=gateway))

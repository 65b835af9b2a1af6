"""Options of `driver: opcua`: endpoint, security, authentication and the nodes to read.

Validated without importing asyncua, so `parkgate check` stays light on what it needs.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.driver import DeviceOptions, StrictModel, WriteLimits
from gateway.units import Duration

NODE_ID = re.compile(
    r"^(?:ns=\d{1,5};)?(?:i=\d{1,10}|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-"
    r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|b=[A-Za-z0-9+/=]+)$", re.DOTALL)
"""The NodeId string forms of OPC UA Part 6 5.3.1.10: `ns=2;s=Line1.Speed`, `i=2258`."""
BROWSE_NAME = re.compile(r"^(?:\d{1,5}:)?[^/]+$")


def check_node_id(text: str) -> str:
    """`text` if it is a NodeId string, else a ValueError a field engineer can act on."""
    if not NODE_ID.match(text):
        raise ValueError(f"{text!r} is not a NodeId: write it as ns=2;s=Line1.Speed, "
                         "ns=3;i=1001, i=2258 or ns=2;g=<guid>")
    return text


def split_path(text: str) -> tuple[str, ...]:
    """Browse names of a path below the Objects folder, `2:Line1/2:Speed` -> two names."""
    parts = tuple(p.strip() for p in text.strip().strip("/").split("/"))
    if parts and parts[0] in ("Objects", "0:Objects"):
        parts = parts[1:]
    if not parts or any(not BROWSE_NAME.match(p) for p in parts):
        raise ValueError(f"{text!r} is not a browse path: write the browse names below the "
                         "Objects folder with their namespace index, e.g. 2:Line1/2:Speed")
    return parts


class Security(StrictModel):
    """How the connection is secured and which server certificates are trusted."""

    policy: Literal["None", "Basic256Sha256"] = Field(
        default="None", description="Security policy of the endpoint.")
    mode: Literal["None", "Sign", "SignAndEncrypt"] | None = Field(
        default=None, description="Message security mode (default: SignAndEncrypt with a "
                                  "policy, None without).")
    certificate: str | None = Field(default=None, description=(
        "This gateway's application instance certificate (PEM or DER); the server must "
        "trust it."))
    private_key: str | None = Field(default=None, description="Its private key (PEM or DER).")
    private_key_password: SecretStr | None = None
    trusted: list[str] = Field(default_factory=list, description=(
        "Server certificates accepted: files (PEM or DER) or directories of them."))
    trust_on_first_use: bool = Field(default=False, description=(
        "Accept the first certificate seen and keep it in the first `trusted` directory; a "
        "different one later is refused."))

    @model_validator(mode="after")
    def _consistent(self) -> Security:
        if self.policy == "None":
            if self.mode not in (None, "None"):
                raise ValueError(f"mode {self.mode} needs a security policy: add "
                                 "`policy: Basic256Sha256`")
            return self
        if self.mode == "None":
            raise ValueError("with policy Basic256Sha256 the mode is Sign or SignAndEncrypt")
        missing = [k for k in ("certificate", "private_key") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"policy {self.policy} needs {' and '.join(missing)}: this "
                             "gateway's certificate and key (the server must trust it)")
        if not self.trusted:
            raise ValueError("policy Basic256Sha256 needs `trusted:` (the server's certificate "
                             "or a directory of trusted ones; see `parkgate opcua cert URL`), "
                             "with `trust_on_first_use: true` a directory to keep the first "
                             "one seen")
        return self

    def effective_mode(self) -> Literal["None", "Sign", "SignAndEncrypt"]:
        """The mode in force once defaults apply."""
        if self.policy == "None":
            return "None"
        return self.mode or "SignAndEncrypt"


class AnonymousAuth(StrictModel):
    """No user identity."""

    type: Literal["anonymous"]


class UserAuth(StrictModel):
    """User name and password (sent encrypted with the server's key)."""

    type: Literal["username"]
    username: str = Field(min_length=1)
    password: SecretStr = Field(description="Use ${file:/etc/parkgate/opcua-password}.")


class CertificateAuth(StrictModel):
    """An X.509 user certificate and its key."""

    type: Literal["certificate"]
    certificate: str = Field(min_length=1, description="User certificate (PEM or DER).")
    private_key: str = Field(min_length=1, description="Its private key (PEM or DER).")
    private_key_password: SecretStr | None = None


Auth = Annotated[AnonymousAuth | UserAuth | CertificateAuth, Field(discriminator="type")]


class NodeSpec(StrictModel):
    """One variable read (or monitored) and turned into one reading."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$",
                      description="Metric name of the readings.")
    node: str | None = Field(default=None, description="NodeId, e.g. ns=2;s=Line1.Speed.")
    path: str | None = Field(default=None, description=(
        "Browse path below the Objects folder, e.g. 2:Line1/2:Speed (instead of `node`)."))
    unit: str | None = None
    sampling_interval: Duration | None = Field(default=None, ge=0, description=(
        "How often the server samples it (subscriptions; default: the device's)."))
    deadband: float | None = Field(default=None, ge=0, description=(
        "Report a change only beyond this (subscriptions)."))
    deadband_type: Literal["absolute", "percent"] = Field(
        default="absolute", description="percent is of the variable's EURange.")
    write: WriteLimits | None = Field(default=None, description=(
        "Makes the node writable through commands, within these limits."))

    @field_validator("node")
    @classmethod
    def _node(cls, v: str | None) -> str | None:
        return None if v is None else check_node_id(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            split_path(v)
        return v

    @model_validator(mode="after")
    def _where(self) -> NodeSpec:
        if (self.node is None) == (self.path is None):
            raise ValueError("give the node's `node:` (NodeId) or its `path:` (browse path), "
                             "one of the two")
        return self

    def where(self) -> str:
        """The NodeId or the browse path, for messages."""
        return self.node if self.node is not None else f"path {self.path}"


class OpcUaOptions(DeviceOptions):
    """Options of `driver: opcua`."""

    driver: Literal["opcua"] = "opcua"
    endpoint: str = Field(description="Server endpoint URL, e.g. opc.tcp://10.0.0.5:4840.")
    security: Security = Field(default_factory=Security)
    auth: Auth = Field(default_factory=lambda: AnonymousAuth(type="anonymous"))
    mode: Literal["poll", "subscribe"] = Field(default="poll", description=(
        "poll: one Read of every node each `interval`; subscribe: the server reports "
        "changes."))
    publishing_interval: Duration = Field(default=1.0, gt=0, description=(
        "How often the server sends the changes it collected (subscribe)."))
    sampling_interval: Duration | None = Field(default=None, ge=0, description=(
        "How often the server samples each node (subscribe; default: publishing_interval)."))
    request_timeout: Duration = Field(default=2.0, gt=0,
                                      description="Longest wait for one answer.")
    keepalive: Duration = Field(default=5.0, ge=1, description=(
        "How often an idle connection is checked (a read of the server state)."))
    max_nodes_per_read: int | None = Field(default=None, ge=1, description=(
        "Split each poll's Read into calls of at most this many nodes, for servers that "
        "answer BadTooManyOperations (default: one call with every node)."))
    nodes: list[NodeSpec] = Field(min_length=1, description="The variables to read.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not re.match(r"^opc\.tcp://[^/:\s]+(:\d{1,5})?(/.*)?$", v):
            raise ValueError(f"{v!r} is not an OPC UA endpoint: write opc.tcp://HOST:PORT "
                             "(4840 is the usual port)")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> OpcUaOptions:
        seen: set[str] = set()
        for n in self.nodes:
            if n.name in seen:
                raise ValueError(f"two nodes are named {n.name!r}; every reading needs its "
                                 "own name")
            seen.add(n.name)
            if self.mode == "poll" and (n.deadband is not None or n.sampling_interval):
                raise ValueError(f"node {n.name}: deadband and sampling_interval apply to "
                                 "subscriptions (mode: subscribe)")
        return self

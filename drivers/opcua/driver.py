"""`driver: opcua`: reads variables of an OPC UA server, polled or by subscription.

`OpcUaDriver` is the registered class; constructing it gives `PolledOpcUa` (mode: poll,
one Read service call per poll) or `SubscribedOpcUa` (mode: subscribe, in `stream.py`).
Both take commands (`Commandable`): a node with a `write:` block is written with its own
variant type and read back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from asyncua import Client, ua

from gateway.driver import Commandable, Driver, DriverContext, PollingDriver, WriteLimits
from gateway.errors import (
    DeviceConfigError,
    DeviceRejected,
    TransientError,
    VerifyFailed,
    WriteRefused,
)
from gateway.model import Reading, Value

from .convert import convert, encode, quality, same, status_name, timestamp, variant_of_data_type
from .options import NodeSpec, OpcUaOptions, UserAuth, split_path
from .session import Settings, classify, connect, disconnect

if TYPE_CHECKING:
    from prometheus_client import Gauge

OBJECTS = ua.NodeId.from_string("i=85")  # the Objects folder: browse paths start here
GONE = frozenset({ua.StatusCodes.BadNodeIdUnknown, ua.StatusCodes.BadNodeIdInvalid})
"""Statuses of a node that does not exist (any more): a path is looked up again."""
MISSING = GONE | {ua.StatusCodes.BadNoMatch}


class OpcUaDriver(Driver, Commandable):
    """Connection, node resolution, conversion and commands shared by both modes."""

    Options = OpcUaOptions

    def __new__(cls, options: OpcUaOptions, ctx: DriverContext) -> OpcUaDriver:
        """The polled or the subscribed driver, as `mode:` says."""
        chosen: type[OpcUaDriver] = cls
        if cls is OpcUaDriver:
            if options.mode == "subscribe":
                from .stream import SubscribedOpcUa  # noqa: PLC0415 - stream imports us

                chosen = SubscribedOpcUa
            else:
                chosen = PolledOpcUa
        return super().__new__(chosen)

    def __init__(self, options: OpcUaOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self.settings = Settings(options.endpoint, options.security, options.auth,
                                 options.request_timeout, options.keepalive)
        self.client: Client | None = None
        self.specs = {n.name: n for n in options.nodes}
        self.ids: dict[str, ua.NodeId | None] = {
            n.name: ua.NodeId.from_string(n.node) if n.node is not None else None
            for n in options.nodes}
        self._bad: dict[str, int] = {}
        """Node name -> bad status code, to log a change once, not every poll."""
        self._vtypes: dict[str, ua.VariantType] = {}
        self._lost: BaseException | None = None
        self._m_bad: Gauge = ctx.metrics.gauge(
            "opcua_bad_nodes", "OPC UA nodes whose last value had a bad status",
            ["device"]).labels(device=options.name)

    # -- connection ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect (verifying the server certificate), log in, look up browse paths."""
        self.client = await connect(self.settings, self.ctx.log, self._on_lost)
        if isinstance(self.o.auth, UserAuth) and self.o.security.policy == "None":
            self.ctx.log.warning("user and password over an unsecured connection: the "
                                 "password may travel in clear text; use security policy "
                                 "Basic256Sha256")
        await self.resolve()

    async def close(self) -> None:
        """Close the session; the server may already be gone."""
        client, self.client = self.client, None
        if client is not None:
            await disconnect(client)

    async def _on_lost(self, exc: Exception) -> None:
        self._lost = exc

    def connected(self) -> Client:
        """The client, or `TransientError` when the connection is gone."""
        if self.client is None:
            raise TransientError("not connected", kind="disconnected")
        if self._lost is not None:
            raise classify(self._lost, f"{self.o.endpoint}: connection lost")
        return self.client

    async def resolve(self) -> None:
        """NodeIds of the nodes given by browse path that are not known yet (one call)."""
        todo = [n for n in self.o.nodes if n.path is not None and self.ids[n.name] is None]
        if not todo:
            return
        client = self.connected()
        paths = ["/" + "/".join(split_path(n.path or "")) for n in todo]
        try:
            results = await client.translate_browsepaths(OBJECTS, paths)
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"{self.o.endpoint}: TranslateBrowsePaths") from None
        for spec, res in zip(todo, results, strict=True):
            code = int(res.StatusCode.value)
            if quality(code) == "good" and res.Targets:
                t = res.Targets[0].TargetId
                self.ids[spec.name] = ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType)
            else:
                self._mark_bad(spec, code, "is not found by its browse path")

    # -- readings ------------------------------------------------------------------------------
    def reading(self, spec: NodeSpec, dv: ua.DataValue) -> Reading:
        """One reading of a DataValue: quality from its status, ts from its timestamps."""
        code = int(dv.StatusCode.value) if dv.StatusCode is not None else 0
        ts = timestamp(dv, self.ctx.clock)
        q = quality(code)
        if q == "bad":
            self._mark_bad(spec, code, "is gone from the server (deleted?)" if code in GONE
                           else "has a bad status")
            return Reading(self.o.name, spec.name, None, ts, spec.unit, "bad")
        value, usable = convert(dv.Value)
        if not usable:
            return Reading(self.o.name, spec.name, None, ts, spec.unit, "bad")
        if spec.name in self._bad:
            del self._bad[spec.name]
            self._m_bad.set(len(self._bad))
            self.ctx.log.info("node reads again", node=spec.name, where=spec.where())
        if dv.Value is not None and dv.Value.VariantType != ua.VariantType.Null:
            self._vtypes[spec.name] = dv.Value.VariantType
        return Reading(self.o.name, spec.name, value, ts, spec.unit, q)

    def bad(self, spec: NodeSpec) -> Reading:
        """A bad reading now (node not resolved, monitored item refused)."""
        return Reading(self.o.name, spec.name, None, self.ctx.clock(), spec.unit, "bad")

    def _mark_bad(self, spec: NodeSpec, code: int, why: str) -> None:
        old = self._bad.get(spec.name)
        if old == code:
            return
        self._bad[spec.name] = code
        self._m_bad.set(len(self._bad))
        if spec.path is not None and code in GONE:
            self.ids[spec.name] = None  # deleted and maybe re-created: look it up again
        if old in MISSING and code in MISSING:
            return  # deleted, then its path not found again: the same news, told once
        self.ctx.log.warning(f"node {why}; reported bad until it reads again", node=spec.name,
                             where=spec.where(), status=status_name(code))

    def all_gone(self) -> bool:
        """Every node is unknown to the server: a wrong namespace index or server?"""
        return len(self._bad) == len(self.specs) and all(
            c in GONE for c in self._bad.values())

    async def read(self, names: Sequence[str]) -> list[ua.DataValue]:
        """One Read service call for the resolved nodes among `names`, in that order."""
        client = self.connected()
        wanted = [ua.ReadValueId(NodeId=i, AttributeId=ua.AttributeIds.Value)
                  for i in (self.ids[n] for n in names) if i is not None]
        step = self.o.max_nodes_per_read or len(wanted) or 1
        out: list[ua.DataValue] = []
        try:
            for start in range(0, len(wanted), step):
                out += await client.uaclient.read(ua.ReadParameters(
                    NodesToRead=wanted[start:start + step],
                    TimestampsToReturn=ua.TimestampsToReturn.Both))
        except Exception as exc:  # noqa: BLE001 - classified
            error = classify(exc, f"{self.o.endpoint}: Read of {len(wanted)} nodes")
            if "BadTooManyOperations" in str(error):
                raise DeviceConfigError(f"{error}: the server reads fewer nodes per call; "
                                        "set `max_nodes_per_read:` (e.g. 100)",
                                        kind="config") from None
            raise error from None
        return out

    # -- commands ------------------------------------------------------------------------------
    def writable(self) -> Mapping[str, WriteLimits]:
        """Nodes with a `write:` block."""
        return {n.name: n.write for n in self.o.nodes if n.write is not None}

    async def read_point(self, point: str) -> Reading:
        """Read one node now."""
        spec = self.specs.get(point)
        if spec is None:
            raise WriteRefused(f"{point}: no such node on this device")
        await self.resolve()
        if self.ids[point] is None:
            return self.bad(spec)
        (dv,) = await self.read([point])
        return self.reading(spec, dv)

    async def _variant_type(self, point: str, node: ua.NodeId) -> ua.VariantType:
        known = self._vtypes.get(point)
        if known is not None:
            return known
        client = self.connected()
        try:
            (dv,) = await client.uaclient.read_attributes([node], ua.AttributeIds.Value)
            vtype = dv.Value.VariantType if dv.Value is not None else ua.VariantType.Null
            if vtype == ua.VariantType.Null:
                (dt,) = await client.uaclient.read_attributes([node], ua.AttributeIds.DataType)
                found = variant_of_data_type(dt.Value.Value) if dt.Value is not None else None
                if found is None:
                    raise WriteRefused(f"{point}: the node's data type is not a plain scalar "
                                       "type this driver writes")
                vtype = found
        except (WriteRefused, TransientError):
            raise
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"{point}: reading its type") from None
        self._vtypes[point] = vtype
        return vtype

    async def write(self, point: str, value: Value) -> Value | None:
        """Write `value` with the node's own variant type; read it back unless verify: off."""
        spec = self.specs.get(point)
        if spec is None or spec.write is None:
            raise WriteRefused(f"{point}: not writable (no `write:` block in the config)")
        await self.resolve()
        node = self.ids[point]
        if node is None:
            raise TransientError(f"{point}: browse path {spec.path} not found on the server",
                                 kind="status", address=spec.where())
        variant = encode(value, await self._variant_type(point, node))
        client = self.connected()
        try:
            (status,) = await client.uaclient.write_attributes(
                [node], [ua.DataValue(variant)], ua.AttributeIds.Value)
        except Exception as exc:  # noqa: BLE001 - classified
            raise classify(exc, f"{point}: Write") from None
        code = int(status.value)
        if quality(code) == "bad":
            raise DeviceRejected(f"{point}: the server refused the write: {status_name(code)}",
                                 code=code, device=self.o.name, address=spec.where())
        if spec.write.verify is False:
            return None
        got = await self.read_point(point)
        if got.quality == "bad" or not same(variant, got.value):
            raise VerifyFailed(f"{point}: wrote {variant.Value!r}, read back {got.value!r} "
                               f"({got.quality})", device=self.o.name, address=spec.where())
        return got.value


class PolledOpcUa(OpcUaDriver, PollingDriver):
    """`mode: poll`: every node read in one Read service call per poll."""

    def __init__(self, options: OpcUaOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self._names = [n.name for n in options.nodes]

    async def poll(self) -> Sequence[Reading]:
        """Read every node once; nodes with a bad status come back as bad readings."""
        await self.resolve()
        names = [n for n in self._names if self.ids[n] is not None]
        results = await self.read(names) if names else []
        if len(results) != len(names):
            raise TransientError(f"Read answered {len(results)} results for {len(names)} "
                                 "nodes", kind="protocol")
        specs = self.specs
        out = [self.reading(specs[n], dv) for n, dv in zip(names, results, strict=True)]
        if len(names) != len(self._names):
            out += [self.bad(specs[n]) for n in self._names if self.ids[n] is None]
        if self.all_gone():
            raise DeviceConfigError(
                f"no node of this device exists on {self.o.endpoint} (BadNodeIdUnknown): "
                "wrong namespace index, NodeIds or server?", kind="config")
        return out


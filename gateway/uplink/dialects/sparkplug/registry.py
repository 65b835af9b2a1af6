"""What the edge node has told its host: node and device metrics, their aliases and types.

Aliases are unique across the whole edge node (node metrics and every device's) and stay
the same for the life of the process, so a host's alias table from one birth stays valid
across rebirths. A device's metrics are the ones seen in its readings; a reading of a
metric its last DBIRTH did not list, or of a type that does not fit the one it was born
with, makes `learn` report a change, and the session sends a new DBIRTH before the DDATA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway import __version__
from gateway.uplink.dialects.sparkplug import codec, ddata
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb

REPLY = "Commands/Reply"
DROPPED = "Buffer/Dropped"

NODE_ALIASES = {codec.BDSEQ: 0, codec.REBIRTH: 1, "Node Info/Gateway": 2,
                "Node Info/Site": 3, "Node Info/Version": 4, REPLY: 5, DROPPED: 6}
FIRST_DEVICE_ALIAS = 100
"""Device metric aliases start here, leaving room for more node metrics."""


@dataclass(slots=True)
class Known:
    """A device metric as last born, with its latest value."""

    alias: int
    datatype: int
    unit: str | None
    value: object
    ts: int


class Registry:
    """Every device's metrics; aliases handed out once per process."""

    def __init__(self, gateway: str, site: str) -> None:
        self.gateway = gateway
        self.site = site
        self.devices: dict[str, dict[str, Known]] = {}
        self.by_alias: dict[int, tuple[str, str]] = {}
        self._next = FIRST_DEVICE_ALIAS

    def learn(self, device: str, readings: Sequence[codec.Reading]) -> bool:
        """Take in readings of `device`; True when its birth certificate changed."""
        metrics = self.devices.setdefault(device, {})
        changed = False
        for r in readings:
            known = metrics.get(r.metric)
            if known is None:
                alias = self._next
                self._next += 1
                metrics[r.metric] = Known(alias, codec.datatype_of(r.value), r.unit,
                                          r.value, r.ts)
                self.by_alias[alias] = (device, r.metric)
                changed = True
                continue
            if not codec.fits(known.datatype, r.value):
                known.datatype = codec.widen(known.datatype, codec.datatype_of(r.value))
                changed = True
            if r.ts >= known.ts:
                known.value = r.value
                known.ts = r.ts
        return changed

    def forget(self, device: str) -> None:
        """A device removed from the config: no longer born (its aliases stay taken)."""
        self.devices.pop(device, None)

    def metric(self, device: str, name: str) -> Known | None:
        """A device metric by name."""
        return self.devices.get(device, {}).get(name)

    def name(self, device: str, alias: int) -> str | None:
        """A device metric's name by alias."""
        owner = self.by_alias.get(alias)
        return owner[1] if owner is not None and owner[0] == device else None

    def node_birth(self, bd_seq: int, ts: int) -> bytes:
        """NBIRTH without `seq`: bdSeq, Node Control/Rebirth and the node's own metrics."""
        payload = pb.Payload(timestamp=ts)
        values: dict[str, tuple[int, object]] = {
            codec.BDSEQ: (codec.INT64, bd_seq), codec.REBIRTH: (codec.BOOLEAN, False),
            "Node Info/Gateway": (codec.STRING, self.gateway),
            "Node Info/Site": (codec.STRING, self.site),
            "Node Info/Version": (codec.STRING, __version__),
            REPLY: (codec.STRING, ""), DROPPED: (codec.STRING, ""),
        }
        for name, (datatype, value) in values.items():
            codec.birth_metric(payload.metrics.add(), name, NODE_ALIASES[name], datatype,
                               value, ts=ts)
        return codec.serialize(payload)

    def device_birth(self, device: str, ts: int) -> bytes:
        """DBIRTH without `seq`: every metric of `device` with name, alias, type, value."""
        payload = pb.Payload(timestamp=ts)
        for name, k in self.devices.get(device, {}).items():
            codec.birth_metric(payload.metrics.add(), name, k.alias, k.datatype, k.value,
                               ts=k.ts, unit=k.unit)
        return codec.serialize(payload)

    def device_data(self, device: str, readings: Sequence[codec.Reading], ts: int, *,
                    historical: bool) -> bytes:
        """DDATA without `seq`: the readings by alias (learned before)."""
        return ddata.encode(self.devices[device], readings, ts, historical=historical)

    def device_data_slow(self, device: str, readings: Sequence[codec.Reading], ts: int, *,
                         historical: bool) -> bytes:
        """`device_data` through the generated message classes (what the tests compare the
        fast encoder with)."""
        payload = pb.Payload(timestamp=ts)
        metrics = self.devices[device]
        add = payload.metrics.add
        for r in readings:
            k = metrics[r.metric]
            codec.fill_reading(add(), k.alias, k.datatype, r, historical=historical)
        return codec.serialize(payload)

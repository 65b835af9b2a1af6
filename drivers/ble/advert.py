"""Decoded advertisement values and the dispatch from raw advert fields to a decoder.

Every decoder is a pure function from bytes to a `Decoded` (or None when the bytes are not
its format). Decoders never raise: malformed input gives None or a `Decoded` whose
`error` says what was wrong, because adverts come from anything nearby.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Format = Literal["bthome", "ruuvi", "atc", "pvvx", "ibeacon"]
FormatChoice = Literal["auto", "bthome", "ruuvi", "atc", "pvvx", "ibeacon"]
Scalar = float | int | str | bool

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
BTHOME_UUID = "0000fcd2" + BASE_UUID_SUFFIX
ENV_SENSING_UUID = "0000181a" + BASE_UUID_SUFFIX
RUUVI_COMPANY = 0x0499
APPLE_COMPANY = 0x004C

_UUID16 = re.compile(r"^(?:0x)?([0-9a-fA-F]{4})$")
_UUID32 = re.compile(r"^(?:0x)?([0-9a-fA-F]{8})$")
_UUID128 = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


@dataclass(frozen=True, slots=True)
class Value:
    """One decoded quantity of an advert."""

    name: str
    value: Scalar
    unit: str | None = None
    event: bool = False
    """An event (a button press) is reported every time, not only on change."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one decoder made of one advert."""

    format: Format
    values: tuple[Value, ...] = ()
    error: str | None = None
    """Why the advert (or its tail) could not be decoded; values may still hold a prefix."""
    packet_id: int | None = None
    """Sender's packet/frame counter, when the format has one (used to drop repeats)."""
    info: Mapping[str, Scalar] = field(default_factory=dict)
    """Identity fields that are not measurements (embedded MAC, iBeacon UUID/major/minor)."""
    refused: str | None = None
    """Why the advert is not trusted at all (a low-cardinality reason such as `plaintext`
    for an unencrypted advert from a sensor that has a bindkey); nothing of it may be used,
    not even as a sign of life."""

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly form for the CLI."""
        out: dict[str, object] = {"format": self.format}
        out["values"] = {v.name: v.value for v in self.values}
        out["units"] = {v.name: v.unit for v in self.values if v.unit}
        if self.packet_id is not None:
            out["packet_id"] = self.packet_id
        if self.info:
            out["info"] = dict(self.info)
        if self.error:
            out["error"] = self.error
        if self.refused:
            out["refused"] = self.refused
        return out


def normalize_uuid(text: str) -> str:
    """The full 128-bit lowercase form of `fcd2`, `0xFCD2`, `0000fcd2` or a full UUID."""
    s = text.strip()
    if m := _UUID16.match(s):
        return f"0000{m.group(1).lower()}{BASE_UUID_SUFFIX}"
    if m := _UUID32.match(s):
        return f"{m.group(1).lower()}{BASE_UUID_SUFFIX}"
    if _UUID128.match(s):
        return s.lower()
    raise ValueError(f"{text!r} is not a UUID: write 16-bit hex such as fcd2 or the full "
                     "128-bit form such as 0000fcd2-0000-1000-8000-00805f9b34fb")


def normalize_mac(text: str) -> str:
    """`AA:BB:CC:DD:EE:FF` from any common spelling (colons, dashes or none, any case)."""
    s = text.strip()
    if not _MAC.match(s):
        raise ValueError(f"{text!r} is not a Bluetooth address such as A4:C1:38:02:83:F4")
    digits = re.sub(r"[:-]", "", s).upper()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def mac_bytes(address: str | None) -> bytes | None:
    """The six address bytes in display order, or None if `address` is not a MAC."""
    if address is None:
        return None
    try:
        return bytes.fromhex(normalize_mac(address).replace(":", ""))
    except ValueError:
        return None


def decode_advert(service_data: Mapping[str, bytes], manufacturer_data: Mapping[int, bytes],
                  *, address: str | None = None, bindkey: bytes | None = None,
                  fmt: FormatChoice = "auto") -> Decoded | None:
    """Decode the first advert field that a known (or the requested) format understands."""
    # imported here so `advert` stays the leaf module the decoders import from
    from drivers.ble import atc, bthome, ibeacon, ruuvi  # noqa: PLC0415

    sd = {k.lower(): v for k, v in service_data.items()}
    found: Decoded | None = None
    if fmt in ("auto", "bthome") and (raw := sd.get(BTHOME_UUID)) is not None:
        found = bthome.decode(raw, address=address, bindkey=bindkey)
    if found is None and fmt in ("auto", "atc", "pvvx") and (
            raw := sd.get(ENV_SENSING_UUID)) is not None:
        found = atc.decode(raw)
        if found is not None and fmt in ("atc", "pvvx") and found.format != fmt \
                and not found.error:
            found = Decoded(found.format, error=f"advert is in {found.format} format, not {fmt}")
    if found is None and fmt in ("auto", "ruuvi") and (
            raw := manufacturer_data.get(RUUVI_COMPANY)) is not None:
        found = ruuvi.decode(raw)
    if found is None and fmt in ("auto", "ibeacon") and (
            raw := manufacturer_data.get(APPLE_COMPANY)) is not None:
        found = ibeacon.decode(raw)
    return found

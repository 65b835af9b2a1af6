"""DL/T 645-2007 data items: identifiers, friendly names, and the format of each value.

Values are BCD, lowest byte first; in signed formats the top bit of the most significant
byte is the sign. Formats from the standard's appendix A (energy A.1, variables A.3):

| DI | value | format | bytes |
| --- | --- | --- | --- |
| 0000xx00 | combined active energy, total (xx=00) and tariff xx | XXXXXX.XX kWh, signed | 4 |
| 0001xx00 / 0002xx00 | forward / reverse active energy | XXXXXX.XX kWh | 4 |
| 0003xx00 / 0004xx00 | combined reactive energy 1 / 2 | XXXXXX.XX kvarh, signed | 4 |
| 0201pp00 | voltage, phase pp (01 A, 02 B, 03 C) | XXX.X V | 2 |
| 0202pp00 | current | XXX.XXX A, signed | 3 |
| 0203pp00 | active power (pp=00 total) | XX.XXXX kW, signed | 3 |
| 0204pp00 / 0205pp00 | reactive / apparent power | XX.XXXX kvar / kVA, signed | 3 |
| 0206pp00 | power factor | X.XXX, signed | 2 |
| 0207pp00 | phase angle | XXX.X deg | 2 |
| 02800001 | neutral current | XXX.XXX A, signed | 3 |
| 02800002 | grid frequency | XX.XX Hz | 2 |
| 02800003 | one-minute average active power | XX.XXXX kW, signed | 3 |
| 02800004..06 | present active / reactive / apparent demand | XX.XXXX, signed | 3 |
| 02800007 | meter temperature | XXX.X degC, signed | 2 |
| 02800008 | clock battery voltage | X.XX V | 2 |
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from drivers.dlt645.frame import di_text, parse_di
from gateway.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class DataItem:
    """One readable value: its DI, friendly name and format."""

    di: int
    name: str
    unit: str | None
    length: int | None
    """Bytes of the value; None accepts any length (a DI the table does not know)."""
    decimals: int = 0
    signed: bool = False
    description: str = ""

    def decode(self, value: bytes) -> float | int:
        """The value of the data bytes that follow the DI in a reply."""
        if self.length is not None and len(value) != self.length:
            raise ProtocolError(f"{di_text(self.di)}: {len(value)} value bytes, expected "
                                f"{self.length}", kind="length")
        return decode_bcd(value, self.decimals, signed=self.signed)


def decode_bcd(value: bytes, decimals: int = 0, *, signed: bool = False) -> float | int:
    """BCD, lowest byte first; in signed formats the top bit of the last byte is the sign."""
    if not value:
        raise ProtocolError("no value bytes", kind="length")
    digits = bytearray(value[::-1])
    negative = False
    if signed:
        negative = bool(digits[0] & 0x80)
        digits[0] &= 0x7F
    text = digits.hex()
    if not text.isdigit():
        raise ProtocolError(f"value {value.hex()} is not BCD", kind="bcd")
    number = -int(text) if negative else int(text)
    if decimals == 0:
        return number
    return round(number / 10.0**decimals, decimals)


def encode_bcd(number: float, length: int, decimals: int = 0, *, signed: bool = False) -> bytes:
    """The inverse of `decode_bcd` (for tools and tests); ValueError if it does not fit."""
    scaled = round(abs(number) * 10**decimals)
    text = f"{scaled:0{length * 2}d}"
    if len(text) > length * 2 or (signed and text[0] not in "01234567"):
        raise ValueError(f"{number} does not fit in {length} BCD bytes")
    raw = bytearray(bytes.fromhex(text))
    if number < 0:
        if not signed:
            raise ValueError(f"{number} is negative but the format is unsigned")
        raw[0] |= 0x80
    return bytes(raw[::-1])


def _table() -> list[DataItem]:
    items: list[DataItem] = []
    tariffs = (("", 0), ("_t1", 1), ("_t2", 2), ("_t3", 3), ("_t4", 4))
    energies = (("energy_total", 0x00, "kWh", True, "combined active energy"),
                ("energy_import", 0x01, "kWh", False, "forward active energy"),
                ("energy_export", 0x02, "kWh", False, "reverse active energy"),
                ("reactive_energy_1", 0x03, "kvarh", True, "combined reactive energy 1"),
                ("reactive_energy_2", 0x04, "kvarh", True, "combined reactive energy 2"))
    for name, kind, unit, signed, text in energies:
        for suffix, tariff in tariffs:
            what = f"{text}, tariff {tariff}" if tariff else f"{text}, total"
            items.append(DataItem(0x00000000 | kind << 16 | tariff << 8,
                                  name + suffix, unit, 4, 2, signed, what))
    phases = (("_a", 1), ("_b", 2), ("_c", 3))
    for suffix, p in phases:
        items.append(DataItem(0x02010000 | p << 8, "voltage" + suffix, "V", 2, 1, False,
                              f"voltage, phase {suffix[1:].upper()}"))
        items.append(DataItem(0x02020000 | p << 8, "current" + suffix, "A", 3, 3, True,
                              f"current, phase {suffix[1:].upper()}"))
    powers = (("power", 0x03, "kW", "active power"), ("reactive_power", 0x04, "kvar",
                                                       "reactive power"),
              ("apparent_power", 0x05, "kVA", "apparent power"))
    for name, kind, unit, text in powers:
        for suffix, p in (("_total", 0), *phases):
            where = "total" if not p else f"phase {suffix[1:].upper()}"
            items.append(DataItem(0x02000000 | kind << 16 | p << 8, name + suffix, unit, 3, 4,
                                  True, f"{text}, {where}"))
    for suffix, p in (("_total", 0), *phases):
        where = "total" if not p else f"phase {suffix[1:].upper()}"
        items.append(DataItem(0x02060000 | p << 8, "power_factor" + suffix, None, 2, 3, True,
                              f"power factor, {where}"))
    for suffix, p in phases:
        items.append(DataItem(0x02070000 | p << 8, "phase_angle" + suffix, "deg", 2, 1, False,
                              f"phase angle, phase {suffix[1:].upper()}"))
    items += [
        DataItem(0x02800001, "neutral_current", "A", 3, 3, True, "neutral (zero line) current"),
        DataItem(0x02800002, "frequency", "Hz", 2, 2, False, "grid frequency"),
        DataItem(0x02800003, "power_1min_avg", "kW", 3, 4, True,
                 "one-minute average active power"),
        DataItem(0x02800004, "demand_active", "kW", 3, 4, True, "present active demand"),
        DataItem(0x02800005, "demand_reactive", "kvar", 3, 4, True, "present reactive demand"),
        DataItem(0x02800006, "demand_apparent", "kVA", 3, 4, True, "present apparent demand"),
        DataItem(0x02800007, "meter_temperature", "°C", 2, 1, True, "temperature in the meter"),
        DataItem(0x02800008, "clock_battery_voltage", "V", 2, 2, False,
                 "clock battery voltage"),
    ]
    return items


ITEMS: tuple[DataItem, ...] = tuple(_table())
BY_NAME: dict[str, DataItem] = {i.name: i for i in ITEMS}
BY_DI: dict[int, DataItem] = {i.di: i for i in ITEMS}


def lookup(text: str) -> DataItem:
    """A friendly name (`voltage_a`) or an 8-hex-digit DI (`02010100`); ValueError if neither.

    A DI the table does not know decodes as an unsigned BCD integer of any length.
    """
    key = text.strip()
    if key.lower() in BY_NAME:
        return BY_NAME[key.lower()]
    try:
        di = parse_di(key)
    except ValueError:
        close = difflib.get_close_matches(key, BY_NAME, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            "; use a friendly name such as voltage_a or 8 hex digits such as 02010100"
        raise ValueError(f"unknown data item {key!r}{hint}") from None
    return BY_DI.get(di) or DataItem(di, f"di_{di_text(di).lower()}", None, None, 0, False,
                                     "not in parkgate's table: raw BCD integer")

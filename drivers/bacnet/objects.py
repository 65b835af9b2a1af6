"""BACnet objects as the config names them, and the pure rules applied to their values.

No bacpypes3 here: `parkgate check` validates `object: analog-input,1` without loading the
protocol stack, and the rules (quality, units, write encoding) are tested with tables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.errors import WriteRefused
from gateway.model import Quality, Value

Kind = Literal["analog", "binary", "multistate", "integer", "unsigned"]

OBJECT_TYPES: dict[str, Kind] = {
    "analog-input": "analog", "analog-output": "analog", "analog-value": "analog",
    "large-analog-value": "analog",
    "binary-input": "binary", "binary-output": "binary", "binary-value": "binary",
    "multi-state-input": "multistate", "multi-state-output": "multistate",
    "multi-state-value": "multistate",
    "integer-value": "integer", "positive-integer-value": "unsigned",
    "accumulator": "unsigned", "pulse-converter": "analog",
}
"""Object types the driver reads, by their standard (hyphenated) name, and the value kind."""

OTHER_TYPES = frozenset({
    "device", "network-port", "schedule", "calendar", "trend-log", "trend-log-multiple",
    "event-log", "notification-class", "event-enrollment", "loop", "program", "file",
    "averaging", "command", "structured-view", "timer", "channel", "lighting-output",
    "load-control", "global-group", "characterstring-value", "octetstring-value",
    "bitstring-value", "date-value", "time-value", "datetime-value", "life-safety-point",
    "life-safety-zone", "access-door", "staging",
})
"""Standard types `parkgate bacnet read` also takes (their properties, not as metrics)."""

COMMANDABLE = frozenset({
    "analog-output", "analog-value", "binary-output", "binary-value", "multi-state-output",
    "multi-state-value", "integer-value", "positive-integer-value", "large-analog-value",
})
"""Types whose present-value has a priority array (outputs always, values optionally)."""

MAX_INSTANCE = 4_194_302  # 2^22 - 2: 4194303 is the "unconfigured" wildcard
_REF = re.compile(r"^\s*([a-z][a-z-]*[a-z])\s*[,:]\s*(\d+)\s*$")
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object of a device: standard type name and instance number."""

    type: str
    instance: int

    @classmethod
    def parse(cls, text: str, *, any_type: bool = False) -> ObjectRef:
        """`analog-input,1` (or `analog-input:1`); ValueError with a hint otherwise.

        `any_type` also takes types the driver does not read as metrics (`device,1031`,
        `schedule,1`...), for one-shot reads of their properties.
        """
        m = _REF.match(text.lower())
        if m is None:
            raise ValueError(f"{text!r}: write an object as TYPE,INSTANCE, such as "
                             "analog-input,1 or binary-output,3")
        kind, instance = m.group(1), int(m.group(2))
        if kind not in OBJECT_TYPES and not (any_type and kind in OTHER_TYPES):
            raise ValueError(f"{text!r}: unknown object type {kind!r}; known: "
                             f"{', '.join(sorted(OBJECT_TYPES))}")
        if instance > MAX_INSTANCE:
            raise ValueError(f"{text!r}: instance {instance} is above {MAX_INSTANCE}")
        return cls(kind, instance)

    @property
    def kind(self) -> Kind:
        """How its present-value is typed (other types: as analog, the widest)."""
        return OBJECT_TYPES.get(self.type, "analog")

    @property
    def commandable(self) -> bool:
        """Whether present-value writes go through a priority array."""
        return self.type in COMMANDABLE

    def __str__(self) -> str:
        return f"{self.type},{self.instance}"


# -- quality ---------------------------------------------------------------------------------
GOOD_RELIABILITY = frozenset({"no-fault-detected", "noFaultDetected"})


def quality_of(status_flags: Sequence[int] | None, reliability: str | None) -> Quality:
    """`quality` from BACnet status-flags (in-alarm, fault, overridden, out-of-service).

    fault, or any reliability other than no-fault-detected -> bad (the sensor is open,
    shorted, over range...); out-of-service -> uncertain (the value is set by hand, not
    measured); in-alarm and overridden leave the value good: the value is real, the alarm
    and the hand switch are facts about the plant, not about the measurement.
    """
    if reliability is not None and reliability not in GOOD_RELIABILITY:
        return "bad"
    if status_flags is None:
        return "good"
    flags = [*status_flags, 0, 0, 0, 0]
    if flags[1]:
        return "bad"
    if flags[3]:
        return "uncertain"
    return "good"


# -- units -----------------------------------------------------------------------------------
UNITS: dict[str, str] = {
    "degreesCelsius": "°C", "degreesFahrenheit": "°F", "degreesKelvin": "K",
    "deltaDegreesFahrenheit": "Δ°F", "deltaDegreesKelvin": "ΔK",
    "percent": "%", "percentRelativeHumidity": "%RH", "partsPerMillion": "ppm",
    "volts": "V", "kilovolts": "kV", "millivolts": "mV", "amperes": "A", "milliamperes": "mA",
    "watts": "W", "kilowatts": "kW", "megawatts": "MW", "voltAmperes": "VA",
    "kilovoltAmperes": "kVA", "voltAmperesReactive": "var", "kilovoltAmperesReactive": "kvar",
    "wattHours": "Wh", "kilowattHours": "kWh", "megawattHours": "MWh",
    "powerFactor": "", "hertz": "Hz", "ohms": "Ω", "kilohms": "kΩ",
    "pascals": "Pa", "kilopascals": "kPa", "bars": "bar", "millibars": "mbar",
    "poundsForcePerSquareInch": "psi", "inchesOfWater": "inH2O",
    "cubicMetersPerHour": "m3/h", "cubicMetersPerSecond": "m3/s", "litersPerSecond": "L/s",
    "litersPerMinute": "L/min", "litersPerHour": "L/h", "cubicFeetPerMinute": "cfm",
    "usGallonsPerMinute": "gpm", "cubicMeters": "m3", "liters": "L",
    "metersPerSecond": "m/s", "kilometersPerHour": "km/h", "feetPerMinute": "ft/min",
    "seconds": "s", "minutes": "min", "hours": "h", "days": "d", "milliseconds": "ms",
    "kilowattsPerSquareMeter": "kW/m2", "wattsPerSquareMeter": "W/m2", "luxes": "lx",
    "kilojoules": "kJ", "megajoules": "MJ", "joules": "J", "btus": "BTU",
    "kilobtus": "kBTU", "tonsRefrigeration": "TR", "btusPerHour": "BTU/h",
    "kilogramsPerHour": "kg/h", "kilograms": "kg", "revolutionsPerMinute": "rpm",
    "meters": "m", "millimeters": "mm", "centimeters": "cm",
    "kilowattHoursPerSquareMeter": "kWh/m2", "noUnits": "",
}
"""BACnet engineering units (bacpypes3 attribute names) to the unit strings readings carry."""


def unit_of(name: str | None) -> str | None:
    """The unit string of a BACnet engineering unit; unknown ones keep the BACnet name."""
    if name is None:
        return None
    unit = UNITS.get(name, name)
    return unit or None


# -- values ----------------------------------------------------------------------------------
def encode(kind: Kind, value: Value, *, states: int | None = None) -> float | int | str:
    """The present-value to write for `value`, by the object's kind; `WriteRefused` if the
    value does not fit (the device is never asked).

    analog -> a finite REAL (float32 range); binary -> "active"/"inactive" (from true/false,
    1/0 or the words); multistate -> a state number 1..number-of-states; integer -> a
    32-bit signed integer; unsigned -> a 32-bit unsigned integer.
    """
    if kind == "analog":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WriteRefused(f"{value!r}: an analog object takes a number")
        number = float(value)
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            raise WriteRefused(f"{value!r}: not a finite REAL (float32)")
        return number
    if kind == "binary":
        if value in ("active", "inactive"):
            return str(value)
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return "active" if value else "inactive"
        raise WriteRefused(f"{value!r}: a binary object takes true/false, 1/0, "
                           "\"active\" or \"inactive\"")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or (isinstance(value, float) and not value.is_integer()):
        raise WriteRefused(f"{value!r}: a {kind} object takes a whole number")
    whole = int(value)
    if kind == "multistate":
        if whole < 1 or (states is not None and whole > states):
            top = f"{states}" if states is not None else "number-of-states"
            raise WriteRefused(f"{value!r}: a multistate object takes a state 1..{top}")
        return whole
    if kind == "integer":
        if not -(2**31) <= whole < 2**31:
            raise WriteRefused(f"{value!r}: out of the 32-bit signed range")
        return whole
    if not 0 <= whole < 2**32:
        raise WriteRefused(f"{value!r}: out of the 32-bit unsigned range")
    return whole


def same(kind: Kind, written: float | int | str, read: Value) -> bool:
    """Whether a read-back equals what was written (REAL compares at float32 precision)."""
    if kind == "analog":
        if not isinstance(read, int | float) or isinstance(read, bool):
            return False
        return math.isclose(float(written), float(read), rel_tol=1e-6, abs_tol=1e-6)
    if kind == "binary":
        return read == (written == "active")
    return read == written

"""Register specs as written in YAML, and the resolved points the driver reads.

Addresses are explicit about their convention, so nobody is off by one:

* `address: 0x0006` (with `table:`) is the 0-based protocol address, exactly what goes on
  the wire and what `parkgate modbus read --address` takes;
* `ref: 30007` is a Modicon reference: the leading digit names the table (0 coil,
  1 discrete input, 3 input register, 4 holding register) and the rest counts from 1,
  so `ref: 30007` is input register 6. Six-digit references (`ref: 400001`) work too; write
  a quoted string to keep a leading zero (`ref: "040001"`, a coil).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

from pydantic import Field, model_validator

from gateway.driver import StrictModel, WriteLimits
from gateway.units import Duration, format_duration

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64",
                   "float32", "float64", "string", "bit", "bool"]
Order = Literal["ABCD", "CDAB", "BADC", "DCBA"]

TABLES: tuple[Table, ...] = get_args(Table)
BIT_TABLES = frozenset({"coil", "discrete"})
WRITABLE_TABLES = frozenset({"holding", "coil"})
WIDTH: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4,
                         "uint64": 4, "float32": 2, "float64": 4, "bit": 1, "bool": 1}
INTEGER_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64"})
NUMERIC_TYPES = INTEGER_TYPES | {"float32", "float64"}
MAX_ADDRESS = 65535

_REF_TABLES_5: dict[int, Table] = {0: "coil", 1: "discrete", 3: "input", 4: "holding"}


def parse_ref(ref: int | str) -> tuple[Table, int]:
    """(table, 0-based address) of a Modicon reference such as 30001, 400001 or "040001"."""
    text = str(ref).strip()
    if not text.isdigit():
        raise ValueError(f"ref {ref!r} is not a Modicon reference such as 30001 or 40001")
    six = len(text) == 6 or int(text) > 99999
    digits = text.zfill(6 if six else 5)
    if len(digits) > 6:
        raise ValueError(f"ref {ref!r} has too many digits (5 or 6 expected, e.g. 40001)")
    table = _REF_TABLES_5.get(int(digits[0]))
    number = int(digits[1:])
    if table is None:
        raise ValueError(f"ref {ref!r}: the leading digit must be 0 (coil), 1 (discrete input), "
                         "3 (input register) or 4 (holding register)")
    if number == 0:
        raise ValueError(f"ref {ref!r}: Modicon references count from 1 "
                         f"({digits[0]}0001 is protocol address 0); "
                         "for a 0-based protocol address write `address:` and `table:`")
    if number - 1 > MAX_ADDRESS:
        raise ValueError(f"ref {ref!r} is beyond the last register (address 65535)")
    return table, number - 1


class RegisterSpec(StrictModel):
    """One value of a device as written in YAML: where it is, how to decode and name it."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$",
                      description="Metric name of the reading.")
    table: Table | None = Field(default=None, description=(
        "holding | input | coil | discrete; implied by `ref`, required with `address` "
        "unless the profile's defaults give it."))
    address: int | None = Field(default=None, ge=0, le=MAX_ADDRESS, description=(
        "0-based protocol address (what goes on the wire), e.g. 0x0006."))
    ref: int | str | None = Field(default=None, description=(
        "Modicon reference instead of `address`: 30007 = input register at address 6, "
        "40001 = holding register at address 0."))
    type: DataType | None = Field(default=None, description=(
        "int16 uint16 int32 uint32 int64 uint64 float32 float64 string bit bool "
        "(bool for coils and discrete inputs; bit picks one bit of a register)."))
    count: int | None = Field(default=None, ge=1, le=125,
                              description="Length of a string, in registers.")
    bit: int | None = Field(default=None, ge=0, le=15,
                            description="Bit number (0 = least significant) for type: bit.")
    order: Order | None = Field(default=None, description=(
        "Byte order of the value's bytes A (most significant) .. D on the wire: "
        "ABCD (big endian), CDAB (word swap), BADC (byte swap), DCBA (little endian)."))
    scale: float | None = Field(default=None, description="value = raw * scale + offset")
    offset: float | None = Field(default=None, description="value = raw * scale + offset")
    decimals: int | None = Field(default=None, ge=0, le=12,
                                 description="Round the value to this many decimals.")
    unit: str | None = Field(default=None, max_length=32, description="Unit of the reading.")
    interval: Duration | None = Field(default=None, gt=0, description=(
        "Read this register every N polls of the device (a multiple of the device "
        "interval); default: every poll."))
    write: WriteLimits | None = Field(default=None, description=(
        "Makes the register writable by commands, within these limits (holding registers, "
        "bits of them and coils only). Without it nothing is written."))

    @model_validator(mode="after")
    def _check(self) -> RegisterSpec:
        if self.address is not None and self.ref is not None:
            raise ValueError(f"register '{self.name}': give either `address` (0-based protocol "
                             "address) or `ref` (Modicon reference such as 40001), not both")
        if self.ref is not None:
            table, _ = parse_ref(self.ref)
            if self.table is not None and self.table != table:
                raise ValueError(f"register '{self.name}': ref {self.ref} is a {table} "
                                 f"reference but table says {self.table}")
        return self

    def located(self) -> bool:
        """Whether this spec says where the register is (a replacement, not a patch)."""
        return self.address is not None or self.ref is not None


class RegisterDefaults(StrictModel):
    """Defaults for the registers of a profile or device."""

    table: Table | None = None
    type: DataType | None = None
    order: Order | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """A resolved register: everything the planner and decoder need, validated."""

    name: str
    table: Table
    address: int
    width: int
    """Registers (or bits, for coils and discrete inputs) the value occupies."""
    type: DataType
    order: Order
    bit: int | None
    scale: float | None
    offset: float | None
    decimals: int | None
    unit: str | None
    every: int
    """Read on every Nth poll of the device."""
    write: WriteLimits | None = None
    """The `write:` block: writable by commands only with one."""

    @property
    def end(self) -> int:
        """First address after the value."""
        return self.address + self.width

    @property
    def key(self) -> tuple[str, int]:
        """(table, address): what the device accepts or rejects."""
        return (self.table, self.address)

    def describe(self) -> str:
        """`input 6..7` style location for messages."""
        last = self.end - 1
        return f"{self.table} {self.address}" + (f"..{last}" if last != self.address else "")


def _decimals_of(x: float) -> int:
    exp = Decimal(repr(x)).normalize().as_tuple().exponent
    return max(0, -exp) if isinstance(exp, int) else 0


def _resolve_one(spec: RegisterSpec, defaults: RegisterDefaults, device_interval: float) -> Point:
    name = spec.name
    if spec.ref is not None:
        table, address = parse_ref(spec.ref)
    elif spec.address is not None:
        address = spec.address
        table_or_none = spec.table or defaults.table
        if table_or_none is None:
            raise ValueError(f"register '{name}': `address: {address}` needs `table:` "
                             "(holding, input, coil or discrete), or write a Modicon `ref:` "
                             "such as 40001")
        table = table_or_none
    else:
        raise ValueError(f"register '{name}' says neither `address` (0-based, with `table`) "
                         "nor `ref` (Modicon reference such as 30001)")
    bit_table = table in BIT_TABLES
    if spec.type is not None:
        dtype: DataType = spec.type
    elif bit_table:
        dtype = "bool"
    elif defaults.type is not None and defaults.type != "bool":
        dtype = defaults.type
    else:
        dtype = "uint16"
    if bit_table and dtype != "bool":
        raise ValueError(f"register '{name}': {table} values are single bits; "
                         f"use type: bool (not {dtype})")
    if not bit_table and dtype == "bool":
        raise ValueError(f"register '{name}': type bool is for coils and discrete inputs; "
                         "for one bit of a register write type: bit and bit: N")
    if (dtype == "bit") != (spec.bit is not None):
        raise ValueError(f"register '{name}': type: bit needs `bit: N` (0..15), and `bit` "
                         "is only for type: bit")
    if (dtype == "string") != (spec.count is not None):
        raise ValueError(f"register '{name}': type: string needs `count:` (its length in "
                         "registers), and `count` is only for strings")
    if dtype not in NUMERIC_TYPES and (spec.scale is not None or spec.offset is not None
                                       or spec.decimals is not None):
        raise ValueError(f"register '{name}': scale, offset and decimals apply to numbers, "
                         f"not to {dtype}")
    if spec.write is not None:
        if table not in WRITABLE_TABLES:
            raise ValueError(f"register '{name}': {table} {'inputs' if bit_table else 'registers'} "
                             "are read-only in Modbus; only holding registers (or one `bit` of "
                             "one) and coils take `write:`")
        if dtype == "string":
            raise ValueError(f"register '{name}': strings cannot be written; `write:` is for "
                             "numbers, bits and coils")
    if spec.scale == 0:
        raise ValueError(f"register '{name}': scale 0 would make every value 0")
    width = spec.count if dtype == "string" and spec.count else WIDTH[dtype]
    if address + width - 1 > MAX_ADDRESS:
        raise ValueError(f"register '{name}': {dtype} at {table} {address} runs past "
                         "address 65535")
    interval = spec.interval if spec.interval is not None else device_interval
    every = max(1, round(interval / device_interval))
    if interval < device_interval - 1e-9 or abs(every * device_interval - interval) > \
            1e-6 * interval:
        raise ValueError(f"register '{name}': interval {format_duration(interval)} must be a "
                         f"multiple of the device interval {format_duration(device_interval)}")
    decimals = spec.decimals
    if decimals is None and dtype in INTEGER_TYPES and (spec.scale or spec.offset):
        # raw * 0.01 is exact in decimal: round away the binary noise (230.10000000000002)
        decimals = max(_decimals_of(spec.scale or 1.0), _decimals_of(spec.offset or 0.0))
    scale = spec.scale if spec.scale not in (None, 1.0) else None
    offset = spec.offset if spec.offset not in (None, 0.0) else None
    return Point(name=name, table=table, address=address, width=width, type=dtype,
                 order=spec.order or defaults.order or "ABCD", bit=spec.bit, scale=scale,
                 offset=offset, decimals=decimals, unit=spec.unit, every=every,
                 write=spec.write)


def resolve(specs: Iterable[RegisterSpec], defaults: RegisterDefaults,
            device_interval: float) -> tuple[Point, ...]:
    """Validated points for `specs`; raises ValueError with every problem found."""
    points: list[Point] = []
    problems: list[str] = []
    for spec in specs:
        try:
            points.append(_resolve_one(spec, defaults, device_interval))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(points)


def merge(base: Sequence[RegisterSpec], overrides: Sequence[RegisterSpec], *,
          only: Sequence[str] | None, exclude: Sequence[str], source: str) -> list[RegisterSpec]:
    """A profile's registers with a device's `only`, `exclude` and `registers` applied.

    A device register whose name is in the profile and that gives no `address`/`ref`
    changes only the keys it sets (a patch: `{name: energy_import, interval: 1m}`); one that
    gives a location replaces the profile's; a new name adds a register.
    """
    merged: dict[str, RegisterSpec] = {}
    problems: list[str] = []
    for spec in base:
        merged[spec.name] = spec
    for label, names in (("only", only or ()), ("exclude", exclude)):
        unknown = [n for n in names if n not in merged]
        if unknown:
            problems.append(f"{label}: {', '.join(unknown)} not in {source} "
                            f"(it has: {', '.join(merged) or 'no registers'})")
    if only is not None:
        keep = set(only)
        merged = {n: s for n, s in merged.items() if n in keep}
    for n in exclude:
        merged.pop(n, None)
    for spec in overrides:
        old = merged.get(spec.name)
        if spec.located() or old is None:
            if old is None and not spec.located():
                problems.append(f"register '{spec.name}' is not in {source} and says neither "
                                "`address` nor `ref`")
                continue
            merged[spec.name] = spec
        else:
            patch = {k: getattr(spec, k) for k in spec.model_fields_set if k != "name"}
            merged[spec.name] = old.model_copy(update=patch)
    if problems:
        raise ValueError("; ".join(problems))
    return list(merged.values())


def check_unique(points: Sequence[Point]) -> None:
    """Raise if two points share a metric name."""
    seen: set[str] = set()
    dups: set[str] = set()
    for p in points:
        (dups if p.name in seen else seen).add(p.name)
    if dups:
        raise ValueError(f"duplicate register names: {', '.join(sorted(dups))}")

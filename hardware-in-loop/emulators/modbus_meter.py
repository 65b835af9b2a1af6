"""Modbus meters for tests and benchmarks: a profile served by pymodbus's server.

Script:
    python hardware-in-loop/emulators/modbus_meter.py --profile eastron-sdm630 \\
        --tcp 127.0.0.1:5020 --units 1,2,3
    python hardware-in-loop/emulators/modbus_meter.py --profile chint-dtsu666 --rtu \\
        --link /tmp/pg-modbus/ttyUSB0 --units 1-3      # RTU on a pseudo-terminal pair
    python hardware-in-loop/emulators/modbus_meter.py --profile ./bench.yaml \\
        --tcp 127.0.0.1:5020-5029 --units 1-10          # ten gateways of ten meters

Tests:
    `MeterEmulator` serves a register map on several unit ids over TCP, RTU-over-TCP or
    RTU, with changing realistic values (or fixed ones), injected exceptions and a log of
    requests. Writes (FC05/06/15/16) land in the datastore and stick (a written register is
    no longer refreshed), are logged with their values, and can be tampered with
    (`on_write`) to play a device that ignores or alters a write. `SerialLine` is a
    null-modem cable made of two pty pairs, with noise injection and unplug/replug of the
    driver's end.

Built on pymodbus 3.16's non-deprecated `pymodbus.simulator` datastore (`SimDevice`,
`SimData`): each unit is a device with separate coil, discrete, holding and input blocks;
addresses outside the map answer exception 2 like a real meter; an `action` callback fills
in fresh values on every read. Units not served stay silent, like an absent meter on RS-485.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import pty
import random
import signal
import struct
import sys
import time
import tty
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # script mode: make `drivers` importable
    sys.path.insert(0, str(ROOT))

from drivers.modbus import profiles  # noqa: E402
from drivers.modbus.registermap import (  # noqa: E402
    BIT_TABLES,
    Point,
    RegisterDefaults,
    RegisterSpec,
    resolve,
)

Value = float | int | str | bool
FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input", 5: "coil", 6: "holding",
            15: "coil", 16: "holding"}
WRITE_FCS = frozenset({5, 6, 15, 16})
_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
            "uint64": "Q", "float32": "f", "float64": "d"}
_LIMITS = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
           "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
           "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}


# --- encoding (deliberately not the driver's decoder: tests compare the two) ----------------

def encode(value: Value, point: Point) -> list[int]:
    """Register words of `value` as a device with `point`'s type and order sends them."""
    if point.type == "string":
        data = str(value).encode()[: 2 * point.width].ljust(2 * point.width, b"\0")
        words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
        if point.order in ("CDAB", "DCBA"):
            words.reverse()
        if point.order in ("BADC", "DCBA"):
            words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
        return words
    if point.type in ("bit", "bool"):
        return [(1 << (point.bit or 0)) if value else 0]
    raw: float | int = value if isinstance(value, int) else float(value)
    if point.scale is not None or point.offset is not None:
        raw = (raw - (point.offset or 0.0)) / (point.scale or 1.0)
    if point.type in _LIMITS:
        lo, hi = _LIMITS[point.type]
        raw = min(hi, max(lo, round(raw)))
    data = struct.pack(">" + _FORMATS[point.type], raw)
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]
    if point.order in ("CDAB", "DCBA"):  # low word first
        words.reverse()
    if point.order in ("BADC", "DCBA"):  # low byte first within each word
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words


# --- values that look like a meter -------------------------------------------------------------

def realistic(point: Point, t: float, phase: float) -> Value:
    """A plausible reading of `point` at time `t` (seconds); slow waves, rising energies."""
    wave = math.sin(t / 7.0 + phase)
    name, unit = point.name.lower(), (point.unit or "")
    if point.type in ("bool", "bit"):
        return int(t / 5.0 + phase) % 2 == 0
    if point.type == "string":
        return f"EMU-{int(phase * 1000) % 1000:03d}"
    if unit == "V":
        base = 400.0 if any(s in name for s in ("l1_l2", "l2_l3", "l3_l1", "ll")) else 230.0
        return base + 2.5 * wave
    if unit == "A":
        return 12.0 + 4.0 * wave
    if unit in ("W", "var", "VA"):
        return 2600.0 + 900.0 * wave
    if unit in ("kW", "kvar", "kVA"):
        return 2.6 + 0.9 * wave
    if unit == "Hz":
        return 50.0 + 0.04 * wave
    if unit in ("kWh", "kvarh"):
        return 12345.6 + (phase * 100) + t * 2.6 / 3600.0
    if unit in ("Wh", "varh"):
        return 12345600.0 + (phase * 1e5) + t * 2600.0 / 3600.0
    if unit == "%":
        return 2.0 + 0.5 * wave
    if unit == "°":
        return 25.0 + 5.0 * wave
    if "factor" in name or "cos" in name:
        return 0.95 + 0.03 * wave
    return 100.0 + 10.0 * wave


@dataclass(frozen=True, slots=True)
class Request:
    """One request the emulator served (or refused)."""

    unit: int
    table: str
    address: int
    count: int
    values: tuple[int | bool, ...] | None = None
    """What a write asked for (registers or coil states); None for a read."""
    fc: int = 0


WriteHook = Callable[[Request, list[Any]], None]
"""Sees every write before it is applied; may change the values in place."""


class MeterEmulator:
    """A register map served on `units` over TCP, RTU-over-TCP or RTU (see module doc)."""

    def __init__(self, points: Sequence[Point] | str, units: Iterable[int] = (1,), *,
                 values: Mapping[str, Value] | None = None,
                 faults: Mapping[tuple[str, int], int] | None = None,
                 profile_dirs: Sequence[str] = (), refresh: float = 0.1,
                 strict_gaps: bool = False) -> None:
        self.points: tuple[Point, ...] = (
            load_points(points, profile_dirs) if isinstance(points, str) else tuple(points))
        self.units = sorted(set(units))
        self.answering = set(self.units)
        """Units that answer; clear one to make its meter go silent."""
        self.values: dict[str, Value] = dict(values or {})
        """Fixed values by register name (else realistic changing ones)."""
        self.faults: dict[tuple[str, int], int] = dict(faults or {})
        """(table, address) -> exception code answered for any read covering it."""
        self.requests: list[Request] = []
        self.on_write: WriteHook | None = None
        """Called with each write and its values (modify them to alter the write)."""
        self.frames_in: dict[int, int] = {}
        """Request frames that reached the server, by function code (before any
        datastore check: a write refused by the datastore is counted here too)."""
        self._written: set[tuple[int, str, int]] = set()
        self.corrupt_next = 0
        """Flip a bit in the middle of this many next replies (a CRC error on RTU)."""
        self.refresh = refresh
        self.strict_gaps = strict_gaps
        """True: unmapped registers between mapped ones answer exception 2 (some meters do);
        False: holes of up to 32 registers read as 0, as most meters answer."""
        self._servers: list[Any] = []
        self._started = time.monotonic()
        self._phase = {u: random.Random(u).uniform(0.0, 6.28) for u in self.units}
        self._by_table: dict[str, list[Point]] = {}
        for p in self.points:
            self._by_table.setdefault(p.table, []).append(p)
        self._cache: dict[tuple[int, str], tuple[float, dict[Point, list[int]]]] = {}

    # -- datastore ----------------------------------------------------------------------------
    def _blocks(self, table: str) -> list[SimData]:
        pts = sorted(self._by_table.get(table, []), key=lambda p: p.address)
        if table in BIT_TABLES:
            if not pts:
                return [SimData(65520, values=[False] * 16, datatype=DataType.BITS)]
            return [SimData(p.address, values=[False], datatype=DataType.BITS)
                    for p in _unique_addresses(pts)]
        if not pts:
            return [SimData(65535, datatype=DataType.INVALID)]
        runs: list[list[int]] = []  # contiguous address runs [start, end)
        hole = 0 if self.strict_gaps else 32
        for p in pts:
            if runs and p.address <= runs[-1][1] + hole:
                runs[-1][1] = max(runs[-1][1], p.end)
            else:
                runs.append([p.address, p.end])
        return [SimData(a, count=b - a, values=0, datatype=DataType.REGISTERS)
                for a, b in runs]

    def devices(self) -> list[SimDevice]:
        """One pymodbus SimDevice per unit, plus a catch-all for units nobody serves."""
        blocks = tuple(self._blocks(t) for t in ("coil", "discrete", "holding", "input"))
        devs = [SimDevice(id=u, simdata=blocks,  # type: ignore[arg-type]
                          action=functools.partial(self._action, u)) for u in self.units]
        devs.append(SimDevice(id=0, simdata=[SimData(0, datatype=DataType.INVALID)]))
        return devs

    def _words(self, unit: int, table: str) -> dict[Point, list[int]]:
        now = time.monotonic()
        cached = self._cache.get((unit, table))
        if cached is not None and now - cached[0] < self.refresh:
            return cached[1]
        t = now - self._started
        phase = self._phase[unit]
        words = {p: encode(self.values[p.name] if p.name in self.values
                           else realistic(p, t, phase + 0.37 * (i % 3)), p)
                 for i, p in enumerate(self._by_table.get(table, []))}
        self._cache[(unit, table)] = (now, words)
        return words

    def set_value(self, name: str, value: Value) -> None:
        """Fix the value of register `name` on every unit."""
        self.values[name] = value
        self._cache.clear()

    async def _action(self, unit: int, fc: int, start: int, address: int, count: int,
                      registers: list[int], _set: list[int] | list[bool] | None
                      ) -> ExcCodes | None:
        table = FC_TABLE.get(fc)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if _set is not None:
            return self._write(unit, fc, table, address, _set)
        if fc in WRITE_FCS:
            return None  # pymodbus reading back what a write set, for its echo: not a request
        self.requests.append(Request(unit, table, address, count, fc=fc))
        span = count * 16 if table in BIT_TABLES else count
        for (f_table, f_addr), code in self.faults.items():
            if f_table == table and address <= f_addr < address + span:
                return ExcCodes(code)
        words = self._words(unit, table)
        written = self._written
        if table in BIT_TABLES:
            # pymodbus passes bit tables as 16-bit words and `count` in words: set them all
            for p, w in words.items():
                if (unit, table, p.address) in written:
                    continue
                i, bit = p.address // 16 - start, p.address % 16
                if 0 <= i < len(registers):
                    registers[i] = (registers[i] | (1 << bit)) if w[0] else \
                        (registers[i] & ~(1 << bit))
            return None
        end = address + count
        for p, w in words.items():
            if p.end > address and p.address < end and not (
                    written and any((unit, table, a) in written for a in range(p.address, p.end))):
                registers[p.address - start:p.end - start] = w
        return None

    def _write(self, unit: int, fc: int, table: str, address: int,
               values: list[int] | list[bool]) -> ExcCodes | None:
        request = Request(unit, table, address, len(values), tuple(values), fc)
        self.requests.append(request)
        for (f_table, f_addr), code in self.faults.items():
            if f_table == table and address <= f_addr < address + len(values):
                return ExcCodes(code)
        if self.on_write is not None:
            self.on_write(request, values)
        # from now on the datastore holds what was written, like a real setpoint register
        self._written.update((unit, table, a) for a in range(address, address + len(values)))
        return None

    @property
    def writes(self) -> list[Request]:
        """The write requests served so far (refused ones included)."""
        return [r for r in self.requests if r.values is not None]

    def _trace(self, rtu: bool, sending: bool, data: bytes) -> bytes:
        # a silent unit sends nothing (pymodbus would answer every unit id otherwise)
        if not sending and len(data) > (1 if rtu else 7):
            fc = data[1] if rtu else data[7]
            self.frames_in[fc] = self.frames_in.get(fc, 0) + 1
        if sending and data:
            unit = data[0] if rtu else (data[6] if len(data) > 6 else 0)
            if unit not in self.answering:
                return b""
            if self.corrupt_next > 0:
                self.corrupt_next -= 1
                mid = len(data) // 2
                data = data[:mid] + bytes([data[mid] ^ 0x10]) + data[mid + 1:]
        return data

    # -- serving ------------------------------------------------------------------------------
    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0, *,
                        rtu_framing: bool = False) -> int:
        """Listen on host:port (0: a free port); returns the port."""
        if port == 0:
            port = _free_port(host)
        server = ModbusTcpServer(self.devices(), address=(host, port),
                                 framer=FramerType.RTU if rtu_framing else FramerType.SOCKET,
                                 trace_packet=functools.partial(self._trace, rtu_framing))
        await server.serve_forever(background=True)
        self._servers.append(server)
        return port

    async def start_rtu(self, port: str, *, baudrate: int = 9600, parity: str = "N") -> None:
        """Serve RTU on a serial device (e.g. `SerialLine.server_path`)."""
        server = _RtuSlaveServer(self.devices(), port=port, baudrate=baudrate,
                                 parity=parity, framer=FramerType.RTU,
                                 trace_packet=functools.partial(self._trace, True))
        await server.serve_forever(background=True)
        self._servers.append(server)

    async def stop(self) -> None:
        """Stop every server (clients see their connection close)."""
        servers, self._servers = self._servers, []
        for s in servers:
            await s.shutdown()

    def requests_since(self, index: int) -> list[Request]:
        """Requests served after the first `index` ones."""
        return self.requests[index:]


def _unique_addresses(points: Sequence[Point]) -> list[Point]:
    seen: set[int] = set()
    out = []
    for p in points:
        if p.address not in seen:
            seen.add(p.address)
            out.append(p)
    return out


def _free_port(host: str) -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def load_points(profile: str, profile_dirs: Sequence[str] = ()) -> tuple[Point, ...]:
    """The points of a profile (name or path), resolved as a driver would."""
    prof = profiles.load(profile, profile_dirs).profile
    return resolve(prof.registers, prof.defaults, 1.0)


def points_of(specs: Sequence[Mapping[str, Any]], order: str | None = None) -> tuple[Point, ...]:
    """Points from register dicts as written in YAML (for tests)."""
    defaults = RegisterDefaults(order=order) if order else RegisterDefaults()  # type: ignore[arg-type]
    plain = [{k: v for k, v in s.items() if k != "interval"} for s in specs]  # poll concern
    return resolve([RegisterSpec.model_validate(s) for s in plain], defaults, 1.0)


class _RtuSlaveServer(ModbusSerialServer):
    """pymodbus's serial server plus the rule a real RTU slave resyncs by.

    On a real bus a pause of 3.5 character times ends a frame, so noise or a torn frame
    before the pause is dropped. pymodbus's framer instead waits for as many bytes as a
    garbage "header" promises, and the meter stays deaf to the next requests (in one random
    64-byte burst, `29 17 dc` announced a 144-byte Read/Write Multiple Registers request:
    the next ten 8-byte requests went into it, a flaky `test_noise_towards_the_meters_too`).
    The pause here is at least 50 ms: bytes of one frame can reach the pty some ms apart.
    """

    def callback_new_connection(self) -> Any:
        handler = super().callback_new_connection()
        baudrate = int(getattr(self.comm_params, "baudrate", None) or 9600)
        silence = max(3.5 * 11 / baudrate, 0.05)
        receive = handler.datagram_received
        last = [0.0]

        def datagram_received(data: bytes, addr: Any) -> None:
            now = time.monotonic()
            if now - last[0] > silence:
                handler.recv_buffer = b""  # a new frame starts after the pause
            last[0] = now
            receive(data, addr)

        handler.datagram_received = datagram_received
        return handler


# --- a serial line made of pseudo-terminals ------------------------------------------------

class SerialLine:
    """A null-modem cable between two pty pairs, bridged in the event loop.

    The driver opens `device_path` (a symlink, stable across `replug()`, like
    /dev/serial/by-id/...); the emulator's server opens `server_path`. `inject()` puts
    noise on the line; `unplug()` pulls the driver's end like a USB adapter.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.device_path = str(self.dir / "ttyUSB0")
        self._loop = asyncio.get_running_loop()
        self.injected = 0
        self._dev = self._open_pair()  # (master, slave) of the driver's end
        self._srv = self._open_pair()
        self.server_path = os.ttyname(self._srv[1])
        self._link()
        self._loop.add_reader(self._srv[0], self._pump, self._srv[0], "dev")
        self._loop.add_reader(self._dev[0], self._pump, self._dev[0], "srv")

    @staticmethod
    def _open_pair() -> tuple[int, int]:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)  # our slave fd stays open so the master never sees a hang-up
        os.set_blocking(master, False)
        return master, slave

    def _link(self) -> None:
        tmp = Path(self.device_path + ".new")
        tmp.unlink(missing_ok=True)
        os.symlink(os.ttyname(self._dev[1]), tmp)
        os.replace(tmp, self.device_path)

    def _pump(self, fd: int, to: str) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        target = self._dev[0] if to == "dev" else self._srv[0]
        if data and target >= 0:
            with contextlib.suppress(OSError):
                os.write(target, data)

    def inject(self, data: bytes, *, to: str = "device") -> None:
        """Write noise towards the driver (`device`), the meters (`server`) or both."""
        if to in ("device", "both") and self._dev[0] >= 0:
            os.write(self._dev[0], data)
        if to in ("server", "both"):
            os.write(self._srv[0], data)
        self.injected += len(data)

    def unplug(self) -> None:
        """Pull the driver's end: its port reads fail and the symlink disappears."""
        if self._dev[0] < 0:
            return
        self._loop.remove_reader(self._dev[0])
        Path(self.device_path).unlink(missing_ok=True)
        for fd in self._dev:
            os.close(fd)
        self._dev = (-1, -1)

    def replug(self) -> None:
        """Plug the driver's end back in (a new pty behind the same symlink)."""
        self.unplug()
        self._dev = self._open_pair()
        self._link()
        self._loop.add_reader(self._dev[0], self._pump, self._dev[0], "srv")

    def close(self) -> None:
        """Remove both pty pairs and the symlink."""
        self.unplug()
        if self._srv[0] >= 0:
            self._loop.remove_reader(self._srv[0])
            for fd in self._srv:
                os.close(fd)
            self._srv = (-1, -1)


# --- script ----------------------------------------------------------------------------------

def _ints(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


async def _main(args: argparse.Namespace) -> None:
    emu = MeterEmulator(args.profile, _ints(args.units), profile_dirs=args.profile_dir or ())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    line: SerialLine | None = None
    if args.tcp:
        host, _, ports = args.tcp.rpartition(":")
        for port in _ints(ports):
            await emu.start_tcp(host or "127.0.0.1", port, rtu_framing=args.rtu_over_tcp)
        print(f"serving {args.profile} units {args.units} on {args.tcp}"
              f"{' (RTU framing)' if args.rtu_over_tcp else ''}", flush=True)
    else:
        line = SerialLine(Path(args.link).parent)
        if Path(args.link).name != "ttyUSB0":
            os.replace(line.device_path, args.link)
            line.device_path = args.link
        await emu.start_rtu(line.server_path, baudrate=args.baudrate)
        print(f"serving {args.profile} units {args.units} on RTU port {line.device_path}",
              flush=True)
    await stop.wait()
    await emu.stop()
    if line is not None:
        line.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the emulator until Ctrl-C."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", required=True, help="profile name or path")
    p.add_argument("--profile-dir", action="append", help="extra profile directory")
    p.add_argument("--units", default="1", help="unit ids, e.g. 1,2,3 or 1-10")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", help="HOST:PORT or HOST:PORT1-PORT2 (one listener per port)")
    where.add_argument("--rtu", action="store_true", help="serve RTU on a pty pair")
    p.add_argument("--rtu-over-tcp", action="store_true", help="RTU framing over --tcp")
    p.add_argument("--link", default="/tmp/pg-modbus/ttyUSB0",
                   help="with --rtu: the port path to give the driver")
    p.add_argument("--baudrate", type=int, default=9600)
    asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    main()

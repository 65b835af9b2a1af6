"""DL/T 645-2007 meters on a pseudo-terminal or behind a TCP "serial device server".

Built from the standard's frame rules, independently of the driver's codec:
read data (0x11) is answered with 0x91 and the value, an unknown DI with the exception
reply 0xD1 and error byte 0x02, read address (0x13) to AA AA AA AA AA AA with 0x93; a
broadcast time sync (0x08 to 99 99 99 99 99 99, YYMMDDhhmmss lowest byte first) sets every
meter's clock and is not answered.
Several meters can share one bus; a meter with `responsive = False` never answers.

Script:  python hardware-in-loop/emulators/dlt645_meter.py --link /tmp/by-id/rs485 \
             --address 000012345678 [--address 000012345679] [--tcp 8899]
Tests:   `Meter`, `MeterBus` (asyncio; `serve_pty()`, `serve_tcp()`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

try:
    from emulators.line_sensor import PtyPort
except ImportError:  # run as a script from this directory
    from line_sensor import PtyPort  # type: ignore[no-redef,import-not-found]

# DI -> (bytes, decimals, signed), from the standard's appendix A
FORMATS: dict[int, tuple[int, int, bool]] = {
    0x00000000: (4, 2, True), 0x00000100: (4, 2, True), 0x00000200: (4, 2, True),
    0x00010000: (4, 2, False), 0x00010100: (4, 2, False), 0x00010200: (4, 2, False),
    0x00010300: (4, 2, False), 0x00010400: (4, 2, False), 0x00020000: (4, 2, False),
    0x02010100: (2, 1, False), 0x02010200: (2, 1, False), 0x02010300: (2, 1, False),
    0x02020100: (3, 3, True), 0x02020200: (3, 3, True), 0x02020300: (3, 3, True),
    0x02030000: (3, 4, True), 0x02030100: (3, 4, True), 0x02030200: (3, 4, True),
    0x02030300: (3, 4, True), 0x02060000: (2, 3, True), 0x02060100: (2, 3, True),
    0x02800002: (2, 2, False), 0x02800007: (2, 1, True), 0x0280000A: (4, 0, False),
}

DEFAULT_VALUES: dict[int, float] = {
    0x00000000: 12345.67, 0x00010000: 12345.67, 0x00010100: 1234.56, 0x00010200: 5678.9,
    0x00010300: 4321.0, 0x00010400: 1111.21, 0x00020000: 0.42,
    0x02010100: 231.4, 0x02010200: 230.8, 0x02010300: 229.9,
    0x02020100: 5.123, 0x02020200: -4.567, 0x02020300: 0.0,
    0x02030000: 1.2345, 0x02030100: 0.5, 0x02030200: -0.25, 0x02030300: 0.9845,
    0x02060000: 0.987, 0x02060100: -0.5,
    0x02800002: 50.01, 0x02800007: -12.5, 0x0280000A: 98765,
}


def bcd(value: float, length: int, decimals: int, signed: bool) -> bytes:
    """Value bytes as a meter sends them: BCD, lowest byte first, sign in the top bit."""
    digits = f"{round(abs(value) * 10**decimals):0{length * 2}d}"[-length * 2:]
    raw = bytearray(int(digits[i:i + 2], 16) for i in range(0, len(digits), 2))
    if signed and value < 0:
        raw[0] |= 0x80
    return bytes(reversed(raw))


def frame(address: str, control: int, data: bytes) -> bytes:
    """A reply frame with FE wake-up bytes, the 0x33 offset and the checksum."""
    addr = bytes(reversed(bytes.fromhex(address)))
    body = bytes([0x68]) + addr + bytes([0x68, control, len(data)])
    body += bytes((b + 0x33) % 256 for b in data)
    return b"\xfe\xfe\xfe\xfe" + body + bytes([sum(body) % 256, 0x16])


@dataclass
class Meter:
    """One meter: its address, its values by DI, and whether it is alive."""

    address: str = "000012345678"
    values: dict[int, float] = field(default_factory=lambda: dict(DEFAULT_VALUES))
    responsive: bool = True
    requests: int = 0
    clock: datetime | None = None
    """What the last broadcast time sync set the clock to (None: never synced)."""
    time_syncs: int = 0

    def answer(self, address: str, control: int, data: bytes) -> bytes | None:
        """The reply to a request, or None if this meter stays quiet."""
        if address == "999999999999":
            if control == 0x08 and len(data) == 6 and self.responsive:
                self._set_clock(data)
            return None  # nobody answers a broadcast
        wildcard = address == "aaaaaaaaaaaa"
        if not self.responsive or (address != self.address and not wildcard):
            return None
        self.requests += 1
        if control == 0x13:
            if not wildcard:
                return None
            return frame(self.address, 0x93, bytes(reversed(bytes.fromhex(self.address))))
        if control == 0x11 and len(data) >= 4:
            di = int.from_bytes(data[:4], "little")
            if di not in self.values or di not in FORMATS:
                return frame(self.address, 0xD1, b"\x02")
            length, decimals, signed = FORMATS[di]
            return frame(self.address, 0x91,
                         data[:4] + bcd(self.values[di], length, decimals, signed))
        return frame(self.address, 0xC0 | (control & 0x1F), b"\x01")


    def _set_clock(self, data: bytes) -> None:
        # ss mm hh DD MM YY on the wire, each byte two BCD digits
        try:
            ss, mi, hh, dd, mo, yy = (int(f"{b:02x}") for b in data)
            self.clock = datetime(2000 + yy, mo, dd, hh, mi, ss)  # noqa: DTZ001 - a meter's clock has no zone
        except ValueError:
            return  # not BCD, or no such date: a real meter ignores it
        self.time_syncs += 1


class MeterBus:
    """Meters on one RS-485 line: every request is seen by all, the addressed one answers.

    Fault knobs: `noise` (bytes sent before each reply), `corrupt` (flip a checksum),
    `split` (send replies in two pieces, `split_gap` seconds apart), `echo` (the pty
    repeats each request, like a half-duplex adapter), `reply_delay`.
    """

    def __init__(self, *meters: Meter, reply_delay: float = 0.005) -> None:
        self.meters = list(meters) or [Meter()]
        self.reply_delay = reply_delay
        self.noise = b""
        self.corrupt = False
        self.split = False
        self.split_gap = 0.03
        self.echo = False
        self.frames_seen = 0
        self._rx = bytearray()
        self._port: PtyPort | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def meter(self, address: str) -> Meter:
        """The meter with this address."""
        return next(m for m in self.meters if m.address == address)

    def feed(self, data: bytes) -> list[bytes]:
        """Replies to the complete requests in `data` (bytes may arrive in pieces)."""
        self._rx += data
        out: list[bytes] = []
        while True:
            start = self._rx.find(0x68)
            if start < 0:
                self._rx.clear()
                return out
            del self._rx[:start]
            if len(self._rx) < 10:
                return out
            length = self._rx[9]
            if self._rx[7] != 0x68 or length > 200:
                del self._rx[:1]
                continue
            if len(self._rx) < 12 + length:
                return out
            raw = bytes(self._rx[:12 + length])
            del self._rx[:12 + length]
            if raw[-1] != 0x16 or sum(raw[:-2]) % 256 != raw[-2]:
                continue  # a real meter ignores a frame with a bad checksum
            self.frames_seen += 1
            address = bytes(reversed(raw[1:7])).hex()
            data = bytes((b - 0x33) % 256 for b in raw[10:-2])
            replies = [r for m in self.meters if (r := m.answer(address, raw[8], data))]
            if len(replies) > 1:  # two meters talk at once: the line carries garbage
                merged = bytearray(max(map(len, replies)))
                for r in replies:
                    for i, b in enumerate(r):
                        merged[i] |= b
                replies = [bytes(merged)]
            out.extend(self._damage(reply) for reply in replies)

    def _damage(self, reply: bytes) -> bytes:
        if self.corrupt:
            reply = reply[:-2] + bytes([(reply[-2] + 1) % 256]) + reply[-1:]
        return self.noise + reply

    # --- a pseudo-terminal --------------------------------------------------------------

    async def serve_pty(self, port: PtyPort) -> MeterBus:
        """Answer requests written to the pty's device side."""
        self._port = port
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.master, self._on_pty)
        return self

    def _on_pty(self) -> None:
        assert self._port is not None
        data = self._port.read()
        if self.echo:  # a half-duplex adapter that hears its own transmission
            self._port.write(data)
        for reply in self.feed(data):
            self._send(self._port.write, reply)

    def _send(self, send: Callable[[bytes], object], reply: bytes) -> None:
        assert self._loop is not None
        if self.split:
            half = len(reply) // 2
            self._loop.call_later(self.reply_delay, send, reply[:half])
            self._loop.call_later(self.reply_delay + self.split_gap, send, reply[half:])
        else:
            self._loop.call_later(self.reply_delay, send, reply)

    def unplug(self) -> None:
        """Pull the RS-485 adapter."""
        if self._port is not None and self._loop is not None and self._port.plugged:
            self._loop.remove_reader(self._port.master)
            self._port.unplug()

    def replug(self) -> None:
        """Plug it back in (a new pty behind the same symlink)."""
        if self._port is not None and self._loop is not None:
            self._port.plug()
            self._loop.add_reader(self._port.master, self._on_pty)

    # --- a TCP serial device server -----------------------------------------------------

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen like a transparent serial server; returns the port."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._client, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            while data := await reader.read(1024):
                for reply in self.feed(data):
                    self._send(lambda b: None if writer.is_closing() else writer.write(b), reply)
        except ConnectionError:
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def stop(self) -> None:
        """Stop serving (the pty itself is closed by its owner)."""
        if self._port is not None and self._loop is not None and self._port.plugged:
            self._loop.remove_reader(self._port.master)
        self._port = None
        if self._server is not None:
            self._server.close()
            for writer in self._clients.values():  # 3.11's Server.close() leaves them open
                writer.close()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


async def _main(args: argparse.Namespace) -> None:
    bus = MeterBus(*(Meter(a) for a in args.address or ["000012345678"]))
    info: dict[str, object] = {"meters": [m.address for m in bus.meters]}
    port = None
    if args.tcp is not None:
        info["tcp"] = await bus.serve_tcp("127.0.0.1", args.tcp)
    else:
        port = PtyPort(args.link)
        await bus.serve_pty(port)
        info.update(port=port.path, pty=port.slave_name)
    print(json.dumps(info), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await bus.stop()
        if port is not None:
            port.close()


def main() -> None:
    """Run the emulator until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--link", help="symlink to create for the pty, e.g. /tmp/by-id/rs485")
    p.add_argument("--address", action="append", help="meter address (repeat for a bus)")
    p.add_argument("--tcp", type=int, help="serve TCP on this port instead of a pty")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()

"""A line sensor on a pseudo-terminal: pushes `T=21.50,H=45.00` lines or answers a command.

Script:  python hardware-in-loop/emulators/line_sensor.py --link /tmp/by-id/usb-sensor
         (prints the port to configure, then runs until Ctrl-C)
Tests:   `PtyPort` (a pty pair with a stable symlink, unplug/replug), `LineSensor`
         (asyncio; push or polled), `LoopThread` (runs any of them beside sync code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pty
import threading
import tty
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PtyPort:
    """A pty pair standing in for a USB serial adapter.

    The device side is the slave (`slave_name`); `link`, if given, is a symlink to it like
    `/dev/serial/by-id/...`, re-pointed at the new pty on `replug()` as udev would.
    """

    def __init__(self, link: str | Path | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self.master = -1
        self.slave = -1
        self.slave_name = ""
        self.plugged = False
        self.plug()

    @property
    def path(self) -> str:
        """What a driver should open: the symlink if there is one, else the slave."""
        return str(self.link) if self.link is not None else self.slave_name

    def plug(self) -> None:
        """Create a fresh pty (both ends raw) and point the symlink at it."""
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master, self.slave, self.slave_name = master, slave, os.ttyname(slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(self.link.name + ".new")
            tmp.unlink(missing_ok=True)
            os.symlink(self.slave_name, tmp)
            os.replace(tmp, self.link)
        self.plugged = True

    def unplug(self) -> None:
        """Like pulling the USB adapter: the symlink goes, readers of the slave get EIO."""
        if not self.plugged:
            return
        if self.link is not None:
            self.link.unlink(missing_ok=True)
        os.close(self.master)
        os.close(self.slave)
        self.master = self.slave = -1
        self.plugged = False

    def replug(self) -> None:
        """Plug back in (a new pty, as a re-enumerated adapter gets a new ttyUSBn)."""
        self.unplug()
        self.plug()

    def write(self, data: bytes) -> int:
        """Bytes towards the driver; dropped (0) if nobody reads and the pty is full."""
        if not self.plugged:
            return 0
        try:
            return os.write(self.master, data)
        except (BlockingIOError, OSError):
            return 0

    def read(self) -> bytes:
        """Bytes the driver sent, b"" if none."""
        if not self.plugged:
            return b""
        try:
            return os.read(self.master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def close(self) -> None:
        """Unplug for good."""
        self.unplug()


def render_kv(values: dict[str, float]) -> bytes:
    """`T=21.50,H=45.00`"""
    return ",".join(f"{k}={v:.2f}" for k, v in values.items()).encode()


def render_csv(values: dict[str, float]) -> bytes:
    """`21.50,45.00`"""
    return ",".join(f"{v:.2f}" for v in values.values()).encode()


def render_json(values: dict[str, float]) -> bytes:
    """`{"T": 21.5, "H": 45.0}`"""
    return json.dumps(values).encode()


RENDER: dict[str, Callable[[dict[str, float]], bytes]] = {
    "kv": render_kv, "csv": render_csv, "json": render_json}


class LineSensor:
    """A sensor that pushes a line every `period` seconds, or answers `command` (polled).

    `values` may be changed at any time; `silent = True` makes it stop talking (and stop
    answering) without closing the port; `send_raw()` injects noise or partial lines.
    """

    def __init__(self, port: PtyPort, *, values: dict[str, float] | None = None,
                 fmt: str = "kv", period: float | None = 0.1, command: bytes | None = None,
                 terminator: bytes = b"\r\n") -> None:
        self.port = port
        self.values = dict(values or {"T": 21.5, "H": 45.0})
        self.render = RENDER[fmt]
        self.period = period
        self.command = command
        self.terminator = terminator
        self.silent = False
        self.prefix = b""
        """Bytes sent once, just before the next line (noise, a partial line)."""
        self.sent = 0
        self.commands = 0
        self.received: list[bytes] = []
        """Every line received (poll commands and others), without its terminator."""
        self.responder: Callable[[bytes], bytes | None] | None = None
        """Answers lines other than the poll command (a reply line without terminator)."""
        self._rx = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def line(self) -> bytes:
        """The next line, terminator included."""
        return self.render(self.values) + self.terminator

    def emit(self) -> None:
        """Send one line now (unless silent)."""
        if self.silent:
            return
        data, self.prefix = self.prefix + self.line(), b""
        if self.port.write(data):
            self.sent += 1

    def send_raw(self, data: bytes) -> None:
        """Inject arbitrary bytes (noise, a partial line, a bad checksum)."""
        self.port.write(data)

    async def start(self) -> LineSensor:
        """Start pushing (and listening for commands) on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._watch()
        if self.period is not None and self.command is None:
            self._task = asyncio.create_task(self._push(self.period), name="line-sensor.push")
        return self

    async def stop(self) -> None:
        """Stop talking; the port stays as it is (close it with `port.close()`)."""
        self._unwatch()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def unplug(self) -> None:
        """Pull the adapter."""
        self._unwatch()
        self.port.unplug()

    def replug(self) -> None:
        """Plug it back in (a new pty behind the same symlink)."""
        self.port.plug()
        self._watch()

    def _watch(self) -> None:
        if self._loop is not None and self.port.plugged:
            self._loop.add_reader(self.port.master, self._on_readable)

    def _unwatch(self) -> None:
        if self._loop is not None and self.port.plugged:
            self._loop.remove_reader(self.port.master)

    async def _push(self, period: float) -> None:
        while True:
            self.emit()
            await asyncio.sleep(period)

    def _on_readable(self) -> None:
        data = self.port.read()
        if not data:
            return
        self._rx += data
        while True:
            cut = min((i for i in (self._rx.find(b"\r"), self._rx.find(b"\n")) if i >= 0),
                      default=-1)
            if cut < 0:
                break
            line = bytes(self._rx[:cut])
            del self._rx[:cut + 1]
            if line:
                self.received.append(line)
            if line and self.command is not None and line == self.command.strip(b"\r\n"):
                self.commands += 1
                self.emit()
            elif line and self.responder is not None and not self.silent:
                reply = self.responder(line)
                if reply is not None:
                    self.port.write(reply + self.terminator)


class LoopThread:
    """An event loop in a background thread, for emulators next to synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="emulator-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float = 10.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop thread (emulator state is not thread-safe)."""
        async def wrap() -> T:
            return fn()

        return self.run(wrap())

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


async def _main(args: argparse.Namespace) -> None:
    port = PtyPort(args.link)
    sensor = LineSensor(port, fmt=args.format, period=args.period,
                        command=args.command.encode() if args.command else None)
    await sensor.start()
    print(json.dumps({"port": port.path, "pty": port.slave_name}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sensor.stop()
        port.close()


def main() -> None:
    """Run the emulator until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--link", help="symlink to create, e.g. /tmp/by-id/usb-sensor")
    p.add_argument("--format", choices=sorted(RENDER), default="kv")
    p.add_argument("--period", type=float, default=1.0, help="seconds between lines")
    p.add_argument("--command", help="answer this command instead of pushing (polled)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()

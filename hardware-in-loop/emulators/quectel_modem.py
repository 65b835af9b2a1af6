"""A Quectel 5G/LTE module's AT port on a pseudo-terminal, for tests and demos.

Answers like an RM500Q (or, with `model="EC25"`, an EC25) in LTE, NSA (EN-DC), SA, search
and limited-service modes, switchable at run time; echo on by default (ATE0/ATE1 work).
Faults on demand: `ERROR` or `+CME ERROR: n` for chosen commands, slow replies, unsolicited
lines interleaved with responses, and the port going away and coming back (unplug/replug
with a stable symlink, as udev gives a USB modem).

Importable (asyncio, inside the test's event loop):

    modem = QuectelModem(mode="nsa", link=tmp_path / "ttyMODEM")
    await modem.start()
    modem.errors['AT+QTEMP'] = "ERROR"; modem.delays["AT+CSQ"] = 2.0
    modem.urcs = ["RING", '+QIURC: "pdpdeact",1']
    modem.unplug(); modem.replug()

or as a script, printing the port path on its first line of output:

    python hardware-in-loop/emulators/quectel_modem.py --mode sa --link /tmp/ttyMODEM

Emulator-only commands: `AT+PGMODE=<mode>` switches the mode, `AT+PGSTATE=<state>` sets
the serving-cell state (NOCONN, CONNECT).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import signal
import tty
from pathlib import Path

MODES = ("lte", "nsa", "sa", "search", "limsrv")

# Serving-cell lines: from the examples in Quectel's RG50xQ&RM5xxQ Network Application Note.
_QENG = {
    "lte": [('+QENG: "servingcell","{state}","LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,'
             "-100,-12,-68,11,0,-32768,27")],
    "nsa": ['+QENG: "servingcell","{state}"',
            '+QENG: "LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,-99,-12,-67,11,9,230,-',
            '+QENG:"NR5G-NSA",460,01,747,-71,33,-11,627264,78,12,1'],
    "sa": [('+QENG: "servingcell","{state}","NR5G-SA","TDD",460,01,19013B004,299,690E0F,'
            "633984,78,12,-107,-13,2,1,-")],
    "search": ['+QENG: "servingcell","SEARCH"'],
    "limsrv": [('+QENG: "servingcell","LIMSRV","LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,'
                "DE10,-118,-17,-90,3,-,-,-")],
}
_CSQ = {"lte": "+CSQ: 23,99", "nsa": "+CSQ: 24,99", "sa": "+CSQ: 20,99",
        "search": "+CSQ: 99,99", "limsrv": "+CSQ: 12,99"}
_COPS = {"lte": '+COPS: 0,0,"CHINA MOBILE",7', "nsa": '+COPS: 0,0,"CHINA MOBILE",13',
         "sa": '+COPS: 0,0,"CHINA MOBILE",12', "search": "+COPS: 0", "limsrv": "+COPS: 0"}
# <stat> of CREG, CEREG, C5GREG (read form, n=0)
_REG = {"lte": (1, 1, 0), "nsa": (1, 1, 0), "sa": (0, 0, 1), "search": (2, 2, 2),
        "limsrv": (3, 3, 0)}
_QTEMP_RM5XX = ['+QTEMP: "modem-lte-sub6-pa1","37"', '+QTEMP: "modem-sdr0-pa0","38"',
                '+QTEMP: "modem-mmw0","-273"', '+QTEMP: "aoss-0-usr","41"',
                '+QTEMP: "cpuss-0-usr","43"', '+QTEMP: "mdmq6-0-usr","42"']
_QTEMP_EC2X = ["+QTEMP: 32,30,31"]
_REVISIONS = {"RM500Q-GL": "RM500QGLABR11A06M4G", "EC25": "EC25EFAR06A06M4G"}


def normalize(command: str) -> str:
    """Upper-case a command line, keeping it otherwise as typed (`AT+QENG="SERVINGCELL"`)."""
    return command.strip().upper()


class QuectelModem:
    """The emulated module; `start()` opens its pty, `path` is what a client opens."""

    def __init__(self, mode: str = "lte", *, link: str | Path | None = None,
                 model: str = "RM500Q-GL", echo: bool = True, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.state = "NOCONN"
        self.model = model
        self.echo = echo
        self.delay = delay
        self.link = Path(link) if link else None
        self.errors: dict[str, str] = {}
        """Command (as `normalize` spells it) -> `ERROR` or `+CME ERROR: n`."""
        self.delays: dict[str, float] = {}
        """Command -> seconds to wait before answering."""
        self.urcs: list[str] = []
        """Unsolicited lines sent before each line of every response."""
        self.received: list[str] = []
        self.ports_opened = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._buf = b""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        """The port to open: the stable link if one was asked for, else the pty itself."""
        return str(self.link) if self.link else self._slave_name

    @property
    def plugged(self) -> bool:
        """True while the pty exists."""
        return self._master is not None

    async def start(self) -> QuectelModem:
        """Create the pty and start answering."""
        self._worker = asyncio.create_task(self._work(), name="quectel-modem.worker")
        self.replug()
        return self

    async def stop(self) -> None:
        """Close the pty and stop."""
        self.unplug()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def replug(self) -> None:
        """A (new) pty appears; the link, if any, points at it."""
        if self._master is not None:
            return
        master, slave = pty.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave, self._slave_name = master, slave, os.ttyname(slave)
        self._buf = b""
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._slave_name)
            tmp.replace(self.link)
        asyncio.get_running_loop().add_reader(master, self._readable)
        self.ports_opened += 1

    def unplug(self) -> None:
        """The pty vanishes (and the link with it), as when a USB modem resets."""
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        while not self._queue.empty():
            self._queue.get_nowait()

    def inject(self, line: str) -> None:
        """Send one unsolicited line now."""
        self._write(f"\r\n{line}\r\n".encode())

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError:
            return  # no client has the port open right now
        self._buf += data
        while b"\r" in self._buf:
            raw, self._buf = self._buf.split(b"\r", 1)
            command = raw.replace(b"\n", b"").decode("ascii", "replace")
            if not command.strip():
                continue
            if self.echo:
                self._write(raw.replace(b"\n", b"") + b"\r")
            self._queue.put_nowait(command)

    async def _work(self) -> None:
        """One command at a time, like the module's AT interpreter."""
        while True:
            command = await self._queue.get()
            key = normalize(command)
            self.received.append(key)
            wait = self.delays.get(key, self.delay)
            if wait > 0:
                await asyncio.sleep(wait)
            lines, final = self.answer(key)
            out = b""
            for line in lines:
                out += b"".join(f"\r\n{u}\r\n".encode() for u in self.urcs)
                out += f"\r\n{line}\r\n".encode()
            out += b"".join(f"\r\n{u}\r\n".encode() for u in self.urcs)
            out += f"\r\n{final}\r\n".encode()
            self._write(out)

    def answer(self, key: str) -> tuple[list[str], str]:
        """Response lines and final result code for one command."""
        if key in self.errors:
            return [], self.errors[key]
        mode = self.mode
        ec2x = self.model.upper().startswith("EC")
        if key.startswith("AT+PGMODE="):
            wanted = key.split("=", 1)[1].strip('"').lower()
            if wanted not in MODES:
                return [], "+CME ERROR: 3"
            self.mode = wanted
            return [], "OK"
        if key.startswith("AT+PGSTATE="):
            self.state = key.split("=", 1)[1].strip('"')
            return [], "OK"
        if key == "ATE0":
            self.echo = False
            return [], "OK"
        if key == "ATE1":
            self.echo = True
            return [], "OK"
        creg, cereg, c5greg = _REG[mode]
        table: dict[str, list[str]] = {
            "AT": [],
            "ATI": ["Quectel", self.model, f"Revision: {_REVISIONS.get(self.model, 'X')}"],
            "AT+CGMI": ["Quectel"],
            "AT+CGMM": [self.model],
            "AT+CSQ": [_CSQ[mode]],
            'AT+QENG="SERVINGCELL"': [x.replace("{state}", self.state) for x in _QENG[mode]],
            "AT+COPS?": [_COPS[mode]],
            "AT+CREG?": [f"+CREG: 0,{creg}"],
            "AT+CEREG?": [f"+CEREG: 0,{cereg}"],
            "AT+QTEMP": _QTEMP_EC2X if ec2x else _QTEMP_RM5XX,
        }
        if not ec2x:  # an LTE-only EC25 does not know the 5GS registration command
            table["AT+C5GREG?"] = [f"+C5GREG: 0,{c5greg}"]
        if key in table:
            return table[key], "OK"
        return [], "ERROR"


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quectel modem AT-port emulator on a pty")
    p.add_argument("--mode", choices=MODES, default="lte")
    p.add_argument("--link", help="stable symlink to the pty (like /dev/ttyUSB2)")
    p.add_argument("--model", default="RM500Q-GL")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before every reply")
    p.add_argument("--error", action="append", default=[], metavar="CMD=RESULT",
                   help='answer CMD with RESULT, e.g. "AT+QTEMP=+CME ERROR: 100"')
    p.add_argument("--urc", action="append", default=[], help="unsolicited line to interleave")
    p.add_argument("--no-echo", action="store_true")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    modem = QuectelModem(args.mode, link=args.link, model=args.model, echo=not args.no_echo,
                         delay=args.delay)
    for item in args.error:
        cmd, _, result = item.partition("=")
        if cmd.upper().startswith("AT+QENG"):  # the command itself holds an "="
            cmd, _, result = item.rpartition("=")
        modem.errors[normalize(cmd)] = result or "ERROR"
    modem.urcs = list(args.urc)
    await modem.start()
    print(modem.path, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await modem.stop()


if __name__ == "__main__":
    asyncio.run(_main(_parse_args()))

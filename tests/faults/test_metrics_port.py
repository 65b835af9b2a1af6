"""The metrics port under a connection flood with few file descriptors, and oversized requests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Agent,
    FaultRow,
    SeqCollector,
    config,
    finish,
    persistent_broker,
    sim,
)

pytestmark = pytest.mark.faults

FLOOD = 80


class Flood:
    """Keeps `n` idle connections to a port open, opening a new one whenever one closes."""

    def __init__(self, host: str, port: int, n: int) -> None:
        self.addr = (host, port)
        self.n = n
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        socks: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                alive = []
                for s in socks:  # the server closed it: recycle
                    try:
                        s.setblocking(False)
                        closed = s.recv(1) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed:
                        s.close()
                    else:
                        alive.append(s)
                socks = alive
                while len(socks) < self.n and not self._stop.is_set():
                    try:
                        socks.append(socket.create_connection(self.addr, timeout=1))
                        self.opened += 1
                    except OSError:
                        break
                time.sleep(0.05)
        finally:
            for s in socks:
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _connects(agent: Agent) -> int:
    return sum(1 for e in agent.log_lines() if e.get("event") == "uplink connected")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_metrics_flood_with_few_descriptors(tmp_path: Path,
                                            report: Callable[[FaultRow], None]) -> None:
    """Found: with `ulimit -n` lowered and 80 recycled connections to the metrics port the
    uplink's reconnect failed with "Too many open files" and the agent wrote 101k ERROR
    lines (34 MB) in 30 s."""
    broker = persistent_broker()
    col = SeqCollector(broker.port, "fdflood")
    cfg = config(tmp_path, broker.port, [sim("fast", "20ms", 5)])
    agent = Agent(tmp_path, cfg).start()
    flood: Flood | None = None
    try:
        assert col.wait_beyond(0, 20) is not None, agent.output()
        agent.wait_metrics()
        assert agent.proc.proc is not None
        pid = agent.proc.proc.pid
        limit = _fds(pid) + 40  # fewer than the flood: it would take them all
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
        host, _, port = agent.listen.rpartition(":")
        log_before = agent.proc.log.stat().st_size
        flood = Flood(host, int(port), FLOOD)
        time.sleep(3.0)
        # the uplink needs a new descriptor now
        broker.restart()
        t0 = time.monotonic()
        while _connects(agent) < 2 and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        took = time.monotonic() - t0
        assert _connects(agent) >= 2, agent.output()  # reconnected during the flood
        assert col.wait_beyond(col.max_seq, 30) is not None, agent.output()
        time.sleep(10.0)  # the flood goes on: a long stretch of refused connections
        opened = flood.opened
        flood.close()
        flood = None
        grown = agent.proc.log.stat().st_size - log_before
        errors = [e for e in agent.log_lines() if e.get("level") == "error"]
        assert agent.alive(), agent.output()
        m = agent.wait_metrics()  # answers again once the flood is gone
        assert m["parkgate_uplink_connected"] == 1
        out = finish(agent, col)
        report(FaultRow(f"{FLOOD} recycled metrics connections, nofile {limit}", opened,
                        issued=out.issued, lost=len(out.lost), duplicates=col.duplicates,
                        recover_s=took,
                        notes=f"log grew {grown / 1024:.0f} KiB, {len(errors)} ERROR lines"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert grown < 200_000, agent.output()
        assert len(errors) < 50, errors[:5]
    finally:
        if flood is not None:
            flood.close()
        agent.proc.kill()
        col.close()
        broker.close()


def _ask(listen: str, request: bytes) -> bytes:
    host, _, port = listen.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
        return data


def test_oversized_request_line_and_headers(tmp_path: Path) -> None:
    """Found: a request line or header over 64 KiB raised an unhandled ValueError per
    request (a traceback in the log each time)."""
    broker = persistent_broker()
    cfg = config(tmp_path, broker.port, [sim("fast", "100ms", 1)])
    agent = Agent(tmp_path, cfg).start()
    try:
        agent.wait_metrics()
        long_line = _ask(agent.listen, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        assert long_line.startswith(b"HTTP/1.1 414 "), long_line[:200]
        long_header = _ask(agent.listen, b"GET /metrics HTTP/1.1\r\nX-Big: "
                           + b"b" * 70_000 + b"\r\n\r\n")
        assert long_header.startswith(b"HTTP/1.1 431 "), long_header[:200]
        many = _ask(agent.listen, b"GET /metrics HTTP/1.1\r\n"
                    + b"X-A: 1\r\n" * 20_000 + b"\r\n")
        assert many.startswith(b"HTTP/1.1 431 "), many[:200]
        assert agent.metrics()["parkgate_uplink_connected"] in (0, 1)
        assert agent.alive()
        out = agent.output(100_000)
        assert "ValueError" not in out and "Traceback" not in out, out[-3000:]
        assert agent.stop() == 0
    finally:
        agent.proc.kill()
        broker.close()

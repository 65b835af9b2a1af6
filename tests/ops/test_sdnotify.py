"""The notify protocol against a real AF_UNIX datagram socket, and through `parkgate run`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import STATUS_MAX, SystemdNotifier, watchdog_loop
from tests.ops.conftest import StartGateway
from tests.support import Mosquitto, base_config, write_config


class Manager:
    """The systemd side: a bound datagram socket that records what arrives."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def recv_until(self, wanted: str, timeout: float = 20.0) -> list[str]:
        """Every datagram up to and including the first containing `wanted`."""
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.recv(max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            got.append(msg)
            if wanted in msg.split("\n"):
                return got
        raise AssertionError(f"{wanted!r} never arrived; got {got}")

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out: list[str] = []
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)


@pytest.fixture(autouse=True)
def _close_notifiers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every notifier a test made (unclosed sockets are warnings, hence errors)."""
    made: list[SystemdNotifier] = []
    real_init = SystemdNotifier.__init__

    def init(self: SystemdNotifier, *args: object, **kw: object) -> None:
        real_init(self, *args, **kw)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(SystemdNotifier, "__init__", init)
    yield
    for n in made:
        n.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[Manager, str]]:
    path = str(tmp_path / "notify.sock")
    m = Manager(path)
    yield m, path
    m.sock.close()


def test_outside_systemd_everything_is_a_silent_no_op() -> None:
    n = SystemdNotifier.from_env({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.status("x") is False
    assert n.watchdog_interval() is None


def test_path_socket_receives_each_message(manager: tuple[Manager, str]) -> None:
    m, path = manager
    n = SystemdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() is True
    assert m.recv() == "READY=1"
    assert n.stopping()
    assert m.recv() == "STOPPING=1"
    assert n.watchdog()
    assert m.recv() == "WATCHDOG=1"
    assert n.extend_timeout(1.5)
    assert m.recv() == "EXTEND_TIMEOUT_USEC=1500000"
    n.close()
    assert n.ready() is False


def test_abstract_socket() -> None:
    name = f"parkgate-test-{uuid.uuid4().hex}"
    m = Manager("\0" + name)
    try:
        n = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert m.recv() == "READY=1"
    finally:
        m.sock.close()


def test_reloading_carries_monotonic_usec(manager: tuple[Manager, str]) -> None:
    m, path = manager
    n = SystemdNotifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = m.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_one_bounded_line(manager: tuple[Manager, str]) -> None:
    m, path = manager
    n = SystemdNotifier(path)
    assert n.status("buffering:\nuplink   down")
    assert m.recv() == "STATUS=buffering: uplink down"
    n.status("x" * 1000)
    assert m.recv() == "STATUS=" + "x" * STATUS_MAX


def test_send_failure_returns_false_not_raises(tmp_path: Path) -> None:
    n = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert n.enabled
    assert n.ready() is False


def test_unsupported_transport_is_ignored() -> None:
    assert not SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_follows_watchdog_pid(manager: tuple[Manager, str]) -> None:
    _m, path = manager
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert SystemdNotifier.from_env(mine).watchdog_interval() == 15.0
    ours = {**mine, "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier.from_env(ours).watchdog_interval() == 15.0
    # Variables inherited from a parent: the watchdog is not ours to feed.
    parents = {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier.from_env(parents).watchdog_interval() is None
    assert SystemdNotifier.from_env({**mine, "WATCHDOG_USEC": "junk"}).watchdog_interval() is None
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None


async def test_watchdog_loop_pings_from_the_loop_and_stops_when_it_blocks(
        manager: tuple[Manager, str]) -> None:
    m, path = manager
    n = SystemdNotifier(path, watchdog_usec=100_000)  # WatchdogSec=100ms: ping every 50ms
    task = asyncio.create_task(watchdog_loop(n))
    await asyncio.sleep(0.28)
    pings = m.drain()
    assert pings.count("WATCHDOG=1") >= 4
    time.sleep(0.4)  # a blocked event loop: no ping may be sent meanwhile
    assert m.drain() == []
    await asyncio.sleep(0.12)
    assert "WATCHDOG=1" in m.drain()  # and it resumes once the loop runs again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watchdog_loop_without_watchdog_waits_until_cancelled() -> None:
    task = asyncio.create_task(watchdog_loop(SystemdNotifier(None)))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_parkgate_run_speaks_the_protocol(manager: tuple[Manager, str], tmp_path: Path,
                                          ops_broker: Mosquitto,
                                          start_gateway: StartGateway) -> None:
    """STATUS before READY, READY once up, WATCHDOG pings, RELOADING on SIGHUP, STOPPING."""
    m, path = manager
    cfg = base_config(tmp_path, ops_broker.port,
                      [{"name": "sim-1", "driver": "sim", "interval": "100ms", "points": 2}])
    gw = start_gateway(write_config(tmp_path / "gw.yaml", cfg),
                       env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    up = m.recv_until("READY=1")
    statuses = [x for x in up if x.startswith("STATUS=")]
    assert statuses, f"no STATUS= before READY=1: {up}"
    after = m.recv_until("WATCHDOG=1", timeout=5)
    assert any(x.startswith(("STATUS=running 1 devices", "STATUS=publishing"))
               for x in up + after), up + after
    gw.signal(signal.SIGHUP)
    reload_msgs = m.recv_until("READY=1")
    reloading = [x for x in reload_msgs if x.startswith("RELOADING=1")]
    assert reloading
    assert "MONOTONIC_USEC=" in reloading[0]
    assert gw.stop() == 0
    assert "STOPPING=1" in m.drain()

"""`parkgate dlt645 read|discover|items` against the meter emulator (pty and TCP)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.dlt645_meter import Meter, MeterBus
from emulators.line_sensor import LoopThread, PtyPort

from gateway.cli import main
from tests.dlt645.conftest import A1, A2


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


@pytest.fixture
def pty_bus(tmp_path: Path, loop_thread: LoopThread) -> Iterator[tuple[PtyPort, MeterBus]]:
    port = PtyPort(tmp_path / "by-id" / "usb-rs485")
    bus = MeterBus(Meter(A1))
    loop_thread.run(bus.serve_pty(port))
    yield port, bus
    loop_thread.run(bus.stop())
    port.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["dlt645", *argv])
    out = capsys.readouterr()
    return code, json.loads(out.out) if out.out.strip() else None, out.err


def test_read_over_a_port(pty_bus: tuple[PtyPort, MeterBus],
                          capsys: pytest.CaptureFixture[str]) -> None:
    port, _bus = pty_bus
    code, doc, _ = run(capsys, "read", "--port", port.path, "--parity", "N", "--address",
                       "12345678", "voltage_a", "02020200", "energy_import", "frequency")
    assert code == 0
    assert doc["address"] == A1
    assert doc["bus"] == port.path
    got = {i["item"]: (i["di"], i["value"], i["unit"]) for i in doc["items"]}
    assert got == {"voltage_a": ("02010100", 231.4, "V"),
                   "current_b": ("02020200", -4.567, "A"),
                   "energy_import": ("00010000", 12345.67, "kWh"),
                   "frequency": ("02800002", 50.01, "Hz")}
    assert doc["items"][0]["raw"] == "1423"


def test_read_exception_reply_exits_1_with_json(pty_bus: tuple[PtyPort, MeterBus],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    port, _bus = pty_bus
    code, doc, _ = run(capsys, "read", "--port", port.path, "--parity", "N", "--address", A1,
                       "voltage_a", "0280000B")
    assert code == 1
    assert doc["items"][0]["value"] == 231.4
    bad = doc["items"][1]
    assert (bad["di"], bad["kind"], bad["code"]) == ("0280000B", "exception", 2)
    assert "no such data" in bad["error"]


def test_read_dead_meter_and_user_errors(pty_bus: tuple[PtyPort, MeterBus],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    port, _bus = pty_bus
    code, doc, err = run(capsys, "read", "--port", port.path, "--parity", "N", "--timeout",
                         "200ms", "--address", A2, "voltage_a")
    assert code == 1
    assert doc is None
    assert "no answer from meter 000012345679" in err
    assert "Traceback" not in err
    for argv, message in ((["--address", "12x", "voltage_a"], "not a meter address"),
                          (["--address", A1, "voltage_q"], "unknown data item"),
                          (["--address", A1, "--timeout", "soon", "voltage_a"], "--timeout")):
        code, _doc, err = run(capsys, "read", "--port", port.path, *argv)
        assert code == 1
        assert message in err


def test_discover_over_a_port_tries_baud_rates(pty_bus: tuple[PtyPort, MeterBus],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    port, bus = pty_bus
    code, doc, _ = run(capsys, "discover", "--port", port.path, "--parity", "N")
    assert code == 0
    assert doc["address"] == A1
    assert doc["baudrate"] == 2400
    bus.meters.append(Meter(A2))
    code, _doc, err = run(capsys, "discover", "--port", port.path, "--parity", "N",
                          "--baudrate", "9600", "--timeout", "300ms")
    assert code == 1
    assert "more than one meter" in err
    bus.meters.clear()
    code, _doc, err = run(capsys, "discover", "--port", port.path, "--parity", "N",
                          "--baudrate", "9600", "--timeout", "100ms")
    assert code == 1
    assert "no meter answered" in err


def test_read_and_discover_over_tcp(loop_thread: LoopThread,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    bus = MeterBus(Meter(A2, values={0x02060000: 0.5, 0x02030000: -1.5}))
    tcp = loop_thread.run(bus.serve_tcp())
    try:
        code, doc, _ = run(capsys, "discover", "--tcp", f"127.0.0.1:{tcp}")
        assert code == 0
        assert doc == {"address": A2, "bus": f"127.0.0.1:{tcp}", "ms": doc["ms"]}
        code, doc, _ = run(capsys, "read", "--tcp", f"127.0.0.1:{tcp}", "--address", A2,
                           "power_factor_total", "power_total")
        assert code == 0
        assert [(i["value"], i["unit"]) for i in doc["items"]] == [(0.5, None), (-1.5, "kW")]
        code, _doc, err = run(capsys, "read", "--tcp", "127.0.0.1", "--address", A2, "power_total")
        assert code == 1
        assert "HOST:PORT" in err
    finally:
        loop_thread.run(bus.stop())


def test_items_and_real_command(pty_bus: tuple[PtyPort, MeterBus],
                                capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = run(capsys, "items")
    assert code == 0
    assert {"item": "frequency", "di": "02800002", "unit": "Hz", "bytes": 2, "decimals": 2,
            "signed": False, "description": "grid frequency"} in doc
    port, _bus = pty_bus
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "dlt645", "read", "--port", port.path,
         "--parity", "N", "--address", A1, "power_factor_a", "meter_temperature"],
        capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [i["value"] for i in doc["items"]] == [-0.5, -12.5]

"""`parkgate modbus read` and `scan` against the emulator (in a loop thread)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from emulators.modbus_meter import MeterEmulator, SerialLine, points_of

from gateway.cli import main

from .conftest import LoopThread

REGS = [{"name": "v", "table": "holding", "address": 100, "type": "float32", "order": "CDAB"},
        {"name": "n", "table": "holding", "address": 102, "type": "int16"},
        {"name": "s", "table": "holding", "address": 103, "type": "string", "count": 3},
        {"name": "relay", "table": "coil", "address": 2}]
VALUES = {"v": 230.5, "n": -7, "s": "ABCDE", "relay": True}


@pytest.fixture
def meter(loop_thread: LoopThread) -> Any:
    emu = loop_thread.call(lambda: MeterEmulator(points_of(REGS), [1, 3], values=VALUES,
                                                 faults={("holding", 200): 2}))
    port = loop_thread.run(emu.start_tcp())
    yield emu, port
    loop_thread.run(emu.stop())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["modbus", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_read_prints_raw_and_decoded(meter: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _emu, port = meter
    code, doc, _ = run(capsys, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "1",
                       "--table", "holding", "--address", "100", "--type", "float32",
                       "--order", "CDAB")
    assert code == 0
    assert doc["registers"] == [0x8000, 0x4366]
    assert doc["hex"] == ["8000", "4366"]
    assert doc["values"] == [230.5]
    assert (doc["unit"], doc["table"], doc["address"], doc["count"]) == (1, "holding", 100, 2)


def test_read_without_type_shows_interpretations(meter: Any,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _emu, port = meter
    code, doc, _ = run(capsys, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "1",
                       "--table", "holding", "--address", "0x64", "--count", "3")
    assert code == 0
    assert doc["values"] == [0x8000, 0x4366, 65529]
    assert doc["interpretations"]["float32"]["CDAB"] == 230.5
    assert doc["interpretations"]["uint32"]["ABCD"] == 0x80004366


def test_read_strings_and_coils(meter: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _emu, port = meter
    _, doc, _ = run(capsys, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "3", "--table",
                    "holding", "--address", "103", "--type", "string", "--count", "3")
    assert doc["values"] == ["ABCDE"]
    _, doc, _ = run(capsys, "read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--table",
                    "coil", "--address", "0", "--count", "3")
    assert doc["bits"] == [False, False, True]


@pytest.mark.parametrize(("argv", "message"), [
    (["--unit", "1", "--table", "holding", "--address", "200", "--count", "2"],
     "unit 1 answered exception 2 (illegal data address) for holding 200..201"),
    (["--unit", "9", "--table", "holding", "--address", "100", "--timeout", "200ms"],
     "unit 9 did not answer holding 100 within 0.2s"),
    (["--unit", "1", "--table", "coil", "--address", "0", "--type", "float32"],
     "--type does not apply to coils (they are single bits)"),
    (["--unit", "1", "--table", "holding", "--address", "0", "--count", "70",
      "--type", "float32"], "that is 140 registers; one read returns at most 125"),
])
def test_read_errors_are_one_clear_line(meter: Any, capsys: pytest.CaptureFixture[str],
                                        argv: list[str], message: str) -> None:
    _emu, port = meter
    code, doc, err = run(capsys, "read", "--tcp", f"127.0.0.1:{port}", *argv)
    assert code == 1
    assert doc is None
    assert err.strip() == f"parkgate: error: {message}"


def test_read_when_nobody_listens(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "read", "--tcp", "127.0.0.1:1", "--unit", "1", "--table",
                       "holding", "--address", "0")
    assert code == 1
    assert err.startswith("parkgate: error: cannot open tcp://127.0.0.1:1:")


def test_scan_lists_units_that_answer(meter: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _emu, port = meter
    code, doc, _ = run(capsys, "scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-5",
                       "--address", "100", "--timeout", "100ms")
    assert code == 0
    assert doc["found"] == [{"unit": 1, "answer": "value", "value": 0x8000},
                            {"unit": 3, "answer": "value", "value": 0x8000}]
    assert doc["scanned"] == 5
    code, doc, _ = run(capsys, "scan", "--tcp", f"127.0.0.1:{port}", "--units", "1,2",
                       "--address", "0", "--timeout", "100ms")
    assert doc["found"] == [{"unit": 1, "answer": "exception", "code": 2,
                             "meaning": "illegal data address"}]


def test_scan_an_rtu_line(tmp_path: Path, loop_thread: LoopThread,
                          capsys: pytest.CaptureFixture[str]) -> None:
    line = loop_thread.call(lambda: SerialLine(tmp_path))
    emu = loop_thread.call(lambda: MeterEmulator("eastron-sdm120", [2, 4]))
    loop_thread.run(emu.start_rtu(line.server_path))
    try:
        code, doc, _ = run(capsys, "scan", "--rtu", line.device_path, "--units", "1-5",
                           "--table", "input", "--timeout", "150ms")
        assert code == 0
        assert [f["unit"] for f in doc["found"]] == [2, 4]
        assert doc["bus"] == f"rtu:{line.device_path} 9600 8N1"
        code, doc, _ = run(capsys, "read", "--rtu", line.device_path, "--unit", "4",
                           "--table", "input", "--address", "0", "--type", "float32")
        assert 220 < doc["values"][0] < 240
    finally:
        loop_thread.run(emu.stop())
        loop_thread.call(line.close)


def test_the_console_script_has_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "modbus", "scan", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--units RANGES" in out
    assert "--rtu DEV" in out
    assert "--tcp HOST[:PORT]" in out

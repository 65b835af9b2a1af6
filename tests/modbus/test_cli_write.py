"""`parkgate modbus write` against the emulator (in a loop thread)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from emulators.modbus_meter import MeterEmulator, points_of

from gateway.cli import main

from .conftest import LoopThread

REGS = [{"name": "v", "table": "holding", "address": 100, "type": "float32", "order": "CDAB"},
        {"name": "n", "table": "holding", "address": 102, "type": "int16"},
        {"name": "flags", "table": "holding", "address": 103, "type": "uint16"},
        {"name": "relay", "table": "coil", "address": 2}]
VALUES = {"v": 230.5, "n": -7, "flags": 0x00F0, "relay": False}


@pytest.fixture
def meter(loop_thread: LoopThread) -> Any:
    emu = loop_thread.call(lambda: MeterEmulator(points_of(REGS), [1], values=VALUES,
                                                 faults={("holding", 200): 2}))
    port = loop_thread.run(emu.start_tcp())
    yield emu, port
    loop_thread.run(emu.stop())


def run(capsys: pytest.CaptureFixture[str], port: int, *argv: str) -> tuple[int, Any, str]:
    code = main(["modbus", "write", "--tcp", f"127.0.0.1:{port}", "--unit", "1", *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_write_a_register_and_print_the_read_back(meter: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    emu, port = meter
    code, doc, _ = run(capsys, port, "--table", "holding", "--address", "102", "--type",
                       "int16", "--value", "-9", "--yes")
    assert code == 0
    assert (doc["registers"], doc["hex"], doc["read_back"]) == ([65527], ["fff7"], -9)
    code, doc, _ = run(capsys, port, "--table", "holding", "--address", "0x64", "--type",
                       "float32", "--order", "CDAB", "--value", "231.25", "--yes")
    assert code == 0
    assert (doc["registers"], doc["read_back"]) == ([0x4000, 0x4367], 231.25)
    assert [(w.fc, w.address, w.values) for w in emu.writes] == [
        (6, 102, (65527,)), (16, 100, (0x4000, 0x4367))]


def test_write_a_coil_and_a_bit(meter: Any, capsys: pytest.CaptureFixture[str]) -> None:
    emu, port = meter
    code, doc, _ = run(capsys, port, "--table", "coil", "--address", "2", "--value", "on",
                       "--yes")
    assert code == 0
    assert (doc["wrote"], doc["read_back"]) == (True, True)
    code, doc, _ = run(capsys, port, "--table", "holding", "--address", "103", "--bit", "0",
                       "--value", "1", "--yes")
    assert code == 0
    assert (doc["bit"], doc["wrote"], doc["read_back"]) == (0, True, True)
    assert emu.writes[-1].values == (0x00F1,)  # the other bits as they were


def test_it_asks_first_and_a_no_writes_nothing(meter: Any, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    emu, port = meter
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    code, doc, err = run(capsys, port, "--table", "holding", "--address", "102", "--type",
                         "int16", "--value", "300")
    assert (code, doc) == (1, None)
    assert f"write unit 1 on tcp://127.0.0.1:{port}: holding 102 <- [300] (hex 012c)? [y/N]" \
        in err
    assert "nothing written" in err
    assert emu.writes == []
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    code, doc, _ = run(capsys, port, "--table", "holding", "--address", "102", "--type",
                       "int16", "--value", "300")
    assert (code, doc["read_back"]) == (0, 300)
    assert len(emu.writes) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--table", "holding", "--address", "102", "--type", "int16", "--value", "40000"],
     "40000 is 40000 in the register, outside int16 (-32768..32767)"),
    (["--table", "holding", "--address", "102", "--value", "12.5"],
     "--value '12.5' is not a number for uint16"),
    (["--table", "coil", "--address", "2", "--value", "2"],
     "--value '2': a coil takes 1/0, true/false or on/off"),
    (["--table", "coil", "--address", "2", "--value", "1", "--type", "int16"],
     "--type and --bit do not apply to coils (they are single bits)"),
    (["--table", "holding", "--address", "200", "--value", "1"],
     "unit 1 answered exception 2 (illegal data address) for a write of holding 200"),
])
def test_errors_are_one_clear_line(meter: Any, capsys: pytest.CaptureFixture[str],
                                   argv: list[str], message: str) -> None:
    emu, port = meter
    code, doc, err = run(capsys, port, *argv, "--yes")
    assert (code, doc) == (1, None)
    assert err.strip() == f"parkgate: error: {message}"
    if "exception" not in message:
        assert emu.requests == []  # refused before anything went on the wire

"""`parkgate serial sniff` against the emulators, in-process and as a real command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.line_sensor import LineSensor, LoopThread, PtyPort
from emulators.nmea_source import NmeaSource

from gateway.cli import main


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main(["serial", "sniff", *argv])
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines()]


def test_sniff_nmea_prints_raw_and_values(tmp_path: Path, loop_thread: LoopThread,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    port = PtyPort(tmp_path / "by-id" / "gnss")
    source = NmeaSource(port, lat=29.563, lon=106.5516, alt=245.3, period=0.05)
    loop_thread.run(source.start())
    try:
        code, docs = run_cli(capsys, "--port", port.path, "--baudrate", "4800",
                             "--parser", "nmea", "--lines", "4", "--seconds", "5")
    finally:
        loop_thread.run(source.stop())
        port.close()
    assert code == 0
    summary = docs.pop()["summary"]
    assert summary["lines"] == 4
    assert summary["parsed"] >= 3
    values = {v["metric"]: (v["value"], v["unit"]) for d in docs for v in d.get("values") or []}
    assert values["latitude"] == (pytest.approx(29.563), "deg")
    assert values["altitude"] == (245.3, "m")
    assert all(d["raw"].startswith("$GP") for d in docs if d["kind"] == "line")


def test_sniff_poll_csv_and_bad_lines(tmp_path: Path, loop_thread: LoopThread,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    port = PtyPort(tmp_path / "by-id" / "probe")
    sensor = LineSensor(port, values={"a": 1.25, "b": 2.5}, fmt="csv", command=b"READ")
    loop_thread.run(sensor.start())
    sensor.prefix = b"\x01\x02\xff\r\n1.0\r\n"  # before the first reply
    try:
        code, docs = run_cli(capsys, "--port", port.path, "--parser", "csv",
                             "--columns", "level:m,flow:l/s", "--send", r"READ\r\n",
                             "--interval", "50ms", "--lines", "4", "--seconds", "5")
    finally:
        loop_thread.run(sensor.stop())
        port.close()
    assert code == 0
    summary = docs.pop()["summary"]
    good = [d for d in docs if d.get("values")]
    assert good[0]["values"] == [{"metric": "level", "value": 1.25, "unit": "m"},
                                 {"metric": "flow", "value": 2.5, "unit": "l/s"}]
    assert summary["errors"]["noise"] == 1
    assert summary["errors"]["partial"] == 1   # "1.0": one column of two
    assert sensor.commands >= 1


def test_sniff_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serial", "sniff", "--port", str(tmp_path / "nope"), "--seconds", "1"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serial", "sniff", "--port", "/dev/null", "--parser", "regex"]) == 1
    assert "needs --pattern" in capsys.readouterr().err


def test_sniff_as_a_real_command(tmp_path: Path, loop_thread: LoopThread) -> None:
    port = PtyPort(tmp_path / "by-id" / "kv")
    sensor = LineSensor(port, values={"T": 23.5, "H": 51.0}, period=0.05)
    loop_thread.run(sensor.start())
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "serial", "sniff", "--port", port.path,
             "--parser", "kv", "--lines", "2", "--seconds", "10"],
            capture_output=True, text=True, timeout=30, check=False)
    finally:
        loop_thread.run(sensor.stop())
        port.close()
    assert proc.returncode == 0, proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert docs[0]["values"] == [{"metric": "T", "value": 23.5, "unit": None},
                                 {"metric": "H", "value": 51.0, "unit": None}]
    assert docs[-1]["summary"]["lines"] == 2

"""hardware-in-loop/bench.py as CI runs it: emulator mode, and a bench config with a device
that is not there (the bench must say FAIL for it, and why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import ROOT

BENCH = ROOT / "hardware-in-loop" / "bench.py"
EMULATED = {"modbus_meter": "modbus-meter", "dlt645_meter": "dlt645-meter",
            "line_sensor": "line-sensor", "quectel_modem": "modem"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, check=False)


def results(stdout: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(stdout[stdout.index("\n{") + 1:])
    return doc


def test_emulator_mode_passes_for_every_emulated_device() -> None:
    res = run("--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = results(res.stdout)
    devices = {d["device"]: d for d in doc["devices"]}  # type: ignore[attr-defined]
    expected = {"sim-1"} | {dev for emu, dev in EMULATED.items()
                            if (ROOT / "hardware-in-loop/emulators" / f"{emu}.py").exists()}
    assert set(devices) == expected
    for name, d in devices.items():
        assert d["passed"], d
        assert d["good"] >= 1, name
        assert d["device_up"] == 1.0, name
        assert d["first_after_s"] is not None
    # real values went through: the sim counter, the meter's profile, the sensor's fields
    assert devices["sim-1"]["metrics"] == ["p0", "p1", "p2"]
    if "line-sensor" in devices:
        assert devices["line-sensor"]["metrics"] == ["humidity", "temperature"]
    if "modbus-meter" in devices:
        assert "voltage_l1" in devices["modbus-meter"]["metrics"]
    gw = doc["gateway"]
    assert gw["clean_stop"] is True  # type: ignore[index]
    assert gw["seq_complete"] is True  # type: ignore[index]
    assert "PASS:" in res.stdout


def test_a_missing_device_fails_with_a_reason(tmp_path: Path) -> None:
    cfg = {"gateway": {"id": "x", "site": "y"}, "buffer": {"path": "/nonexistent/b.db"},
           "uplink": {"mqtt": {"brokers": ["mqtts://production.example:8883"]}},
           "devices": [
               {"name": "sim-ok", "driver": "sim", "interval": "200ms", "points": 1},
               {"name": "meter-unplugged", "driver": "modbus", "unit": 1,
                "profile": "eastron-sdm630", "interval": "500ms",
                "transport": {"type": "rtu", "port": str(tmp_path / "ttyUSB9")}},
               {"name": "spare", "driver": "sim", "enabled": False}]}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run("--config", str(path), "--grace", "3", "--intervals", "2", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    devices = {d["device"]: d for d in results(res.stdout)["devices"]}  # type: ignore[attr-defined]
    assert set(devices) == {"sim-ok", "meter-unplugged"}   # the disabled one is skipped
    assert devices["sim-ok"]["passed"] is True
    bad = devices["meter-unplugged"]
    assert bad["passed"] is False
    assert bad["readings"] == 0
    assert bad["note"].startswith("no readings within 4s")
    assert "FAIL" in res.stdout
    assert "disabled in the config, skipped" in res.stderr


def test_unknown_device_name_is_a_usage_error() -> None:
    res = run("--device", "nope")
    assert res.returncode == 2
    assert "no such device: nope" in res.stderr

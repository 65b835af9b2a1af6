"""`parkgate ble scan` and `parkgate ble decode` as a field engineer runs them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from gateway.cli import main
from tests.ble import fakes
from tests.ble.conftest import by_id
from tests.support import ROOT


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def parkgate(*args: str, env: dict[str, str] | None = None) -> Run:
    """`parkgate ARGS` in this process (fast); `main` is what the console script runs."""
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Run(code, out.getvalue(), err.getvalue())


def parkgate_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess (tracebacks would show here)."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60, check=False)


def test_decode_encrypted_bthome_example() -> None:
    # bthome.io/encryption worked example
    out = parkgate("ble", "decode", "--service-data", "fcd2:41e445f3c9962b332211006c7c4519",
                   "--address", "54:48:e6:8f:80:a5",
                   "--bindkey", "231d39c1d7cc1ab1aee224cd096db932")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["format"] == "bthome"
    assert doc["values"] == {"temperature": 25.06, "humidity": 50.55}
    assert doc["units"] == {"temperature": "°C", "humidity": "%"}
    assert doc["address"] == "54:48:E6:8F:80:A5"


def test_decode_manufacturer_data_with_decimal_and_hex_ids() -> None:
    raw = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"  # Ruuvi RAWv2 "valid data"
    for ident in ("0x0499", "1177"):
        out = parkgate("ble", "decode", "--manufacturer-data", f"{ident}:{raw}")
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["values"]["temperature"] == 24.3
        assert doc["values"]["pressure"] == 1000.44
        assert doc["info"]["mac"] == "CB:B8:33:4C:88:4F"


def test_decode_full_uuid_and_recorded_pvvx() -> None:
    data = by_id("pvvx_custom")["advert"]["service_data"]["0000181a-0000-1000-8000-00805f9b34fb"]
    out = parkgate("ble", "decode", "--service-data",
                   f"0000181A-0000-1000-8000-00805F9B34FB:{data}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["values"]["temperature"] == 17.05


def test_decode_errors_are_one_line() -> None:
    cases: list[tuple[list[str], str]] = [
        (["--service-data", "fcd2:zz"], "not hex"),
        (["--service-data", "xyz:00"], "not a UUID"),
        (["--manufacturer-data", "0x1ffff:00"], "ID:HEX"),
        (["--service-data", "fcd2:41e445", "--bindkey", "12"], "32 hex digits"),
        ([], "--service-data UUID:HEX"),
        (["--manufacturer-data", "0x0001:0102"], "no known format"),
    ]
    for args, message in cases:
        out = parkgate("ble", "decode", *args)
        assert out.returncode == 1
        assert out.stderr.startswith("parkgate: error: ")
        assert message in out.stderr
        assert "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1


def test_decode_without_bindkey_prints_the_reason_and_fails() -> None:
    out = parkgate_process("ble", "decode", "--service-data", "fcd2:41e445f3c9962b332211006c7c4519")
    assert out.returncode == 1
    assert "bindkey" in json.loads(out.stdout)["error"]


def test_scan_without_adapter_is_one_clear_line() -> None:
    # this machine has no Bluetooth (no D-Bus system bus either): the real bleak backend
    out = parkgate_process("ble", "scan", "--seconds", "1")
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("parkgate: error: cannot scan [")
    assert out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_scan_with_a_missing_adapter_reports_the_reason() -> None:
    out = parkgate("ble", "scan", "--seconds", "1", "--backend",
                   "tests.ble.fakes:NoAdapterScanner")
    assert out.returncode == 1
    assert "cannot scan [no_adapter]: no Bluetooth adapter found" in out.stderr


def test_scan_lists_decoded_devices(tmp_path: Path) -> None:
    adverts: list[dict[str, Any]] = [by_id(i)["advert"]
                                     for i in ("atc1441", "ruuvi_rawv2", "ibeacon")]
    adverts.append({"address": "11:22:33:44:55:66", "rssi": -90, "name": "phone",
                    "manufacturer_data": {"0x0006": "0109"}})
    script = tmp_path / "replay.json"
    script.write_text(json.dumps({"interval": 0.02, "adverts": adverts}))
    out = parkgate("ble", "scan", "--seconds", "0.5", "--backend",
                   "tests.ble.fakes:ReplayScanner", env={fakes.REPLAY_ENV: str(script)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_address = {d["address"]: d for d in doc["devices"]}
    assert set(by_address) == {"A4:C1:38:02:83:F4", "CD:D4:FA:52:7A:F2", "6A:6B:C9:A2:3E:43"}
    atc = by_address["A4:C1:38:02:83:F4"]
    assert atc["rssi"] == -33
    assert atc["decoded"]["format"] == "atc"
    assert atc["decoded"]["values"]["temperature"] == 16.2
    assert atc["adverts"] >= 2
    assert [d["rssi"] for d in doc["devices"]] == [-33, -68, -77]  # strongest first
    everything = parkgate("ble", "scan", "--seconds", "0.3", "--all", "--backend",
                          "tests.ble.fakes:ReplayScanner", env={fakes.REPLAY_ENV: str(script)})
    assert "11:22:33:44:55:66" in everything.stdout


def test_help_lists_the_flags() -> None:
    out = parkgate_process("ble", "decode", "--help")
    assert "--service-data" in out.stdout
    assert "--manufacturer-data" in out.stdout
    assert "--bindkey" in out.stdout
    assert "--address" in out.stdout


def test_decode_refuses_plaintext_when_a_bindkey_is_given() -> None:
    # issue 19: a plaintext advert decoded to 23.56 °C although the sensor has a bindkey
    out = parkgate("ble", "decode", "--service-data", "fcd2:40023409",
                   "--address", "54:48:E6:8F:80:A5",
                   "--bindkey", "231d39c1d7cc1ab1aee224cd096db932")
    assert out.returncode != 0
    assert out.stdout == ""  # no values from it
    assert "plaintext advert refused" in out.stderr
    assert "bindkey" in out.stderr
    assert "23.56" not in out.stderr
    # without --bindkey it is an ordinary plaintext advert
    plain = parkgate("ble", "decode", "--service-data", "fcd2:40023409")
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["values"] == {"temperature": 23.56}

"""systemd/parkgate.service: `systemd-analyze verify` clean and security exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

UNIT = ROOT / "systemd" / "parkgate.service"
EXEC = "/opt/parkgate/venv/bin/parkgate"
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def unit_with_exec(tmp_path: Path, exe: str) -> Path:
    """A copy of the unit whose ExecStart names an executable that exists here.

    `verify` checks that ExecStart's binary exists and is executable; /opt/parkgate is not
    installed on a development machine, so the copy points at this venv's console script.
    """
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} run -c /etc/parkgate/parkgate.yaml\n" in text
    copy = tmp_path / "parkgate.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={exe} "))
    return copy


def console_script() -> str:
    exe = Path(sys.executable).parent / "parkgate"
    assert exe.exists(), exe
    return str(exe)


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    assert analyze
    return subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)


def exposure(unit: Path) -> tuple[float, str]:
    assert analyze
    out = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    m = re.search(r"Overall exposure level for parkgate\.service: (\d+\.\d)", out)
    assert m, out
    return float(m.group(1)), out


def test_verify_is_clean(tmp_path: Path) -> None:
    res = verify(unit_with_exec(tmp_path, console_script()))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""
    assert res.stdout.strip() == ""


def test_verify_of_the_original_only_misses_the_binary(tmp_path: Path) -> None:
    """What verify says about the unit as shipped, on a box without /opt/parkgate."""
    copy = tmp_path / "parkgate.service"
    shutil.copy(UNIT, copy)
    res = verify(copy)
    if Path(EXEC).exists():
        assert res.returncode == 0, res.stderr
    else:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines == [f"parkgate.service: Command {EXEC} is not executable: "
                         "No such file or directory"], lines


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    unit = unit_with_exec(tmp_path, console_script())
    level, report = exposure(unit)
    assert level <= MAX_EXPOSURE, report
    # The same gate as systemd-analyze's own: --threshold is in tenths.
    assert analyze
    gate = subprocess.run([analyze, "security", "--offline=true",
                           f"--threshold={int(MAX_EXPOSURE * 10)}", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert gate.returncode == 0, gate.stdout
    # What is left open is what the gateway needs, nothing else.
    open_items = {ln.split()[1] for ln in report.splitlines() if ln.startswith("✗")}
    assert open_items <= {
        "RootDirectory=/RootImage=", "PrivateDevices=", "RestrictAddressFamilies=~AF_UNIX",
        "RestrictAddressFamilies=~AF_(INET|INET6)", "PrivateNetwork=", "PrivateUsers=",
        "DeviceAllow=", "IPAddressDeny="}, open_items


def test_threshold_gate_really_fails_above_the_level(tmp_path: Path) -> None:
    """--threshold works here, so the gate above is not vacuous."""
    assert analyze
    unit = unit_with_exec(tmp_path, console_script())
    level, _ = exposure(unit)
    gate = subprocess.run([analyze, "security", "--offline=true",
                           f"--threshold={int(level * 10) - 1}", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert gate.returncode != 0


def test_unit_declares_the_operations_contract() -> None:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).append(v.strip())
    assert keys["Type"] == ["notify"]
    assert keys["ExecStart"] == [f"{EXEC} run -c /etc/parkgate/parkgate.yaml"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"]
    assert keys["WatchdogSec"] == ["20s"]
    assert keys["User"] == ["parkgate"]
    assert keys["StateDirectory"] == ["parkgate"]
    assert keys["ConfigurationDirectory"] == ["parkgate"]
    assert keys["RestartPreventExitStatus"] == ["2"]
    assert "StartLimitBurst" in keys
    assert "StartLimitIntervalSec" in keys
    assert set(keys["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert {"char-ttyUSB rw", "char-ttyACM rw"} <= set(keys["DeviceAllow"])


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (apt-get install shellcheck)")
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted((ROOT / "systemd").glob("*.sh"))
    assert {p.name for p in scripts} >= {"install.sh", "build-bundle.sh"}
    res = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stdout


# The kernel module registering each `char-` group the unit allows (the group names of
# /proc/devices); None: built into Debian's and Raspberry Pi OS's kernels (8250, PL011).
GROUP_MODULES = {"ttyUSB": "usbserial", "ttyACM": "cdc_acm", "ttyS": None, "ttyAMA": None}


def test_device_groups_resolve_when_the_service_starts() -> None:
    """`DeviceAllow=char-GROUP` is resolved through /proc/devices at service start; a group
    whose driver is not loaded yet is silently left out until a restart (an adapter
    plugged in later would be refused). Each module-provided group must be loaded first:
    `Wants=` and `After=` its `modprobe@MODULE.service`."""
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, _, v = line.partition("=")
            keys.setdefault(k.strip(), []).extend(v.split())
    groups = [v.removeprefix("char-") for v in keys["DeviceAllow"] if v.startswith("char-")]
    assert groups, keys["DeviceAllow"]
    for group in groups:
        assert group in GROUP_MODULES, f"which module registers char-{group}?"
        module = GROUP_MODULES[group]
        if module is not None:
            unit = f"modprobe@{module}.service"
            assert unit in keys["Wants"], (group, keys["Wants"])
            assert unit in keys["After"], (group, keys["After"])

"""systemd/parkgate-ingest.service: `systemd-analyze verify` clean, exposure <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

UNIT = ROOT / "systemd" / "parkgate-ingest.service"
EXEC = "/opt/parkgate/venv/bin/parkgate"
analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None,
                                reason="systemd-analyze not installed (apt-get install systemd)")


def local_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console script (verify checks it)."""
    exe = Path(sys.executable).parent / "parkgate"
    text = UNIT.read_text()
    assert f"ExecStart={EXEC} ingest -c /etc/parkgate/ingest.yaml\n" in text
    copy = tmp_path / "parkgate-ingest.service"
    copy.write_text(text.replace(f"ExecStart={EXEC} ", f"ExecStart={exe} "))
    return copy


def test_verify_is_clean(tmp_path: Path) -> None:
    assert analyze
    res = subprocess.run([analyze, "verify", "--man=no", str(local_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "" and res.stdout.strip() == ""


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    assert analyze
    out = subprocess.run([analyze, "security", "--offline=true", str(local_copy(tmp_path))],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    m = re.search(r"Overall exposure level for parkgate-ingest\.service: (\d+\.\d)", out)
    assert m and float(m.group(1)) <= 2.0, out


def test_restarts_always_under_the_same_identity() -> None:
    keys = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                if "=" in line and not line.startswith("#"))
    assert keys["Restart"] == "always"  # its broker session waits for it (Mosquitto 2.0)
    assert keys["RestartPreventExitStatus"] == "2"

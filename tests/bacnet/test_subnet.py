"""The production layout in a network namespace: every station on UDP 47808 of one subnet,
and a device on another BACnet network behind a router (NET:IP addressing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("subnet.py")


def _namespaces() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"],
                           capture_output=True, timeout=10, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces(),
                                reason="needs root for a network namespace (unshare -n)")


def test_one_subnet_on_the_standard_port() -> None:
    res = subprocess.run(["unshare", "-n", sys.executable, str(SCRIPT)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["discovered"] == [[3001, "10.9.0.2"], [3002, "10.9.0.3"],
                                 [5001, "2001:10.9.1.2"]]
    assert got["resubscribed_after_i_am"] is True
    assert got["values"][0] == 20.0 and 24.5 in got["values"] and got["values"][-1] == 19.0
    assert got["behind_router"][0] == 20.0 and got["behind_router"][-1] == 27.5

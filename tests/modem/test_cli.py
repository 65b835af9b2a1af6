"""`parkgate modem status`, run as a real process against the emulator and a fake mmcli."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from emulators.quectel_modem import QuectelModem

from tests.modem.conftest import FakeMmcli
from tests.support import ROOT


async def parkgate(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_from_at_port(modem: QuectelModem) -> None:
    modem.mode = "nsa"
    modem.urcs = ["RING"]
    modem.errors["AT+QTEMP"] = "+CME ERROR: 100"
    code, out, err = await parkgate("modem", "status", "--at", modem.path, "--baudrate",
                                    "115200")
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "source": "at", "model": "RM500Q-GL", "state": "NOCONN", "technology": "NR5G-NSA",
        "operator": "CHINA MOBILE", "operator_code": "46001", "registration": "home",
        "registered": True, "rsrp": -99, "rsrq": -12, "sinr": 2, "rssi": -67,
        "nr_rsrp": -71, "nr_rsrq": -11, "nr_sinr": 33, "cell_id": "5F1EA15",
        "band": "B3+n78", "temperature": None, "signal_quality": None,
        "port": modem.path, "errors": {"AT+QTEMP": "+CME ERROR: 100"}}


async def test_status_from_modemmanager(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one", modem_0="modem-sa", signal="signal-sa")
    code, out, err = await parkgate("modem", "status")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["modem"] == "/org/freedesktop/ModemManager1/Modem/0"
    assert {k: doc[k] for k in ("source", "technology", "registration", "rsrp", "nr_sinr",
                                "signal_quality")} == {
        "source": "modemmanager", "technology": "NR5G-SA", "registration": "roaming",
        "rsrp": -101.0, "nr_sinr": 6.5, "signal_quality": 72}


async def test_user_errors_are_one_line(tmp_path: Path, fake_mmcli: FakeMmcli) -> None:
    code, out, err = await parkgate("modem", "status", "--baudrate", "9600")
    assert (code, out, err) == (1, "", ("parkgate: error: --baudrate is for an AT port: add "
                                       "--at PORT\n"))
    code, out, err = await parkgate("modem", "status", "--at", str(tmp_path / "ttyNONE"))
    assert (code, out) == (1, "")
    assert err.startswith(f"parkgate: error: cannot open AT port {tmp_path / 'ttyNONE'}")
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    fake_mmcli.use(list="list-empty")
    code, _out, err = await parkgate("modem", "status")
    assert (code, err) == (1, "parkgate: error: ModemManager sees no modem\n")

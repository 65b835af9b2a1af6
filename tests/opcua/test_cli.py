"""`parkgate opcua browse|read|cert` against a real server, as a field engineer runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from emulators.opcua_server import PlantServer

from drivers.opcua.trust import thumbprint
from tests.opcua.conftest import Certs
from tests.support import ROOT, free_port


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "opcua", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ok(*args: str) -> Any:
    code, out, err = await cli(*args)
    assert code == 0, err
    return json.loads(out)


async def test_read_and_browse(plant: PlantServer) -> None:
    doc = await ok("read", plant.url, "ns=2;s=Plant.Int16", "2:Plant/2:Float",
                   "ns=2;s=Plant.Broken")
    values = doc["values"]
    assert [v["value"] for v in values] == [-1234, 1.2, None]
    assert [v["type"] for v in values] == ["Int16", "Float", "Null"]  # bad: no value
    assert values[1]["node_id"] == "ns=2;s=Plant.Float"
    assert values[2]["quality"] == "bad" and values[2]["status"].startswith("BadSensorFailure")
    top = await ok("browse", plant.url)
    plant_entry = next(c for c in top["children"] if c["browse_name"] == "2:Plant")
    assert plant_entry == {"browse_name": "2:Plant", "node_id": "ns=2;s=Plant",
                           "class": "Object", "path": "2:Plant"}
    inside = await ok("browse", plant.url, "2:Plant")
    by_name = {c["browse_name"]: c for c in inside["children"]}
    assert by_name["2:Double"]["value"] == 2.5 and by_name["2:Double"]["path"] == "2:Plant/2:Double"
    assert by_name["2:String"]["type"] == "String"
    same = await ok("browse", plant.url, "ns=2;s=Plant")
    assert len(same["children"]) == len(inside["children"])


async def test_errors_are_one_line(plant: PlantServer) -> None:
    code, out, err = await cli("read", plant.url, "2:Plant/2:Nope")
    assert code == 1 and out == ""
    assert err.strip() == ("parkgate: error: 2:Plant/2:Nope: browse path not found "
                           "(BadNoMatch (0x806F0000))")
    code, _, err = await cli("read", f"opc.tcp://127.0.0.1:{free_port()}", "i=2258")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "refused" in err
    assert "Traceback" not in err
    code, _, err = await cli("read", "http://x", "i=2258")
    assert code == 1 and "not an OPC UA endpoint" in err


async def test_cert_show_accept_and_secured_read(secure_plant: PlantServer, certs: Certs,
                                                 tmp_path: Path) -> None:
    expected = thumbprint(certs.server.cert.read_bytes())
    shown = await ok("cert", secure_plant.url)
    (cert,) = shown["certificates"]
    assert cert["thumbprint_sha1"] == expected
    assert cert["subject"] == "CN=plant-server"
    assert sorted(cert["endpoints"]) == ["Basic256Sha256/Sign", "Basic256Sha256/SignAndEncrypt"]
    secured = ["--policy", "Basic256Sha256", "--cert", str(certs.client.cert),
               "--key", str(certs.client.key), "--trust", str(tmp_path / "trusted")]
    code, _, err = await cli("read", secure_plant.url, "ns=2;s=Plant.Double", *secured)
    assert code == 1 and expected in err and "not trusted" in err
    code, _, err = await cli("cert", secure_plant.url, "--accept", str(tmp_path / "trusted"),
                             "--thumbprint", "00" * 20)
    assert code == 1 and "nothing accepted" in err
    accepted = await ok("cert", secure_plant.url, "--accept", str(tmp_path / "trusted"),
                        "--thumbprint", expected)
    assert Path(accepted["accepted"]).read_bytes() == certs.server.cert.read_bytes()
    password = tmp_path / "pw"
    password.write_text("secret\n")
    doc = await ok("read", secure_plant.url, "ns=2;s=Plant.Double", *secured,
                   "--username", "operator", "--password-file", str(password))
    assert doc["values"][0]["value"] == 2.5


BLOCK_ASYNCUA = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "asyncua" or name.startswith("asyncua."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
from gateway.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_without_the_extra_the_fix_is_named() -> None:
    import subprocess

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", BLOCK_ASYNCUA, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    done = run("opcua", "read", "opc.tcp://127.0.0.1:4840", "i=2258")
    assert done.returncode == 1
    assert done.stderr.strip() == ("parkgate: error: parkgate opcua needs asyncua: "
                                   "pip install 'parkgate[opcua]'")
    done = run("check", "drivers/opcua/sample.yaml")
    assert done.returncode == 2
    assert "pip install 'parkgate[opcua]'" in done.stdout + done.stderr

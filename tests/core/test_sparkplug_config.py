"""`uplink.mqtt.sparkplug` through `parkgate check` (positions), the example file, the demo."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BASE = """\
gateway: {id: gw-1, site: park}
buffer: {path: /tmp/never-opened.db}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:1883"]
%s
devices:
  - {name: sim-1, driver: sim, interval: 1s, points: 1, pattern: counter}
"""


def check(tmp: Path, mqtt: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "gw.yaml"
    path.write_text(BASE % mqtt)
    return subprocess.run([sys.executable, "-m", "gateway", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


@pytest.mark.parametrize(("mqtt", "where", "message"), [
    ('    dialect: sparkplug\n    sparkplug: {group: "plant/1"}', "7:24",
     "uplink.mqtt.sparkplug.group: 'plant/1' contains /"),
    ("    dialect: sparkplug\n    sparkplug:\n      group: g\n      node: 'n+1'", "9:13",
     "uplink.mqtt.sparkplug.node: 'n+1' contains +"),
    ("    dialect: sparkplug\n    sparkplug:\n      group: g\n      primary_host: 'a#'",
     "9:21", "uplink.mqtt.sparkplug.primary_host: 'a#' contains #"),
    ("    dialect: sparkplug", "6:14", "uplink.mqtt.dialect: dialect: sparkplug needs"),
    ("    sparkplug: {group: g}", "6:", "uplink.mqtt.sparkplug"),
    ("    dialect: sparkplug\n    sparkplug: {group: g, nodes: x}", "7:", "nodes"),
])
def test_check_names_the_line(tmp_path: Path, mqtt: str, where: str, message: str) -> None:
    out = check(tmp_path, mqtt)
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stdout.strip().splitlines()[0] if out.stdout.strip() else out.stderr
    assert re.match(rf".*gw\.yaml:{where}", line), line
    assert message in line, line


def test_a_valid_sparkplug_config_checks(tmp_path: Path) -> None:
    out = check(tmp_path, "    dialect: sparkplug\n    sparkplug: {group: plant-1, node: gw-1, "
                          "primary_host: scada, allow_unsigned_dcmd: false}")
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_example_checks() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "check",
                          str(ROOT / "config" / "sparkplug.example.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_demo_runs_with_the_sparkplug_dialect() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "demo", "--dialect", "sparkplug",
                          "--seconds", "6"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    final = out.stdout.rsplit("parkgate demo", 1)[-1]
    assert "NBIRTH" in final or "NDEATH" in final, final  # the view decoded the births
    assert re.search(r"line-counter\s+[1-9]", final), final
    arrived = re.search(r"stopped\. (\d+) readings arrived upstream", out.stdout)
    assert arrived and int(arrived.group(1)) > 0, out.stdout[-3000:]
    assert "missing seqs: 0" in final, final

"""The agent never imports the ingest or psycopg: `parkgate run` under an import guard."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, Mosquitto, base_config, write_config

GUARD = """
import importlib.abc, os, signal, sys, threading
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "psycopg" or name.startswith("gateway.ingest"):
            sys.stderr.write(f"FORBIDDEN IMPORT {name}\\n"); sys.stderr.flush(); os._exit(3)
        return None
sys.meta_path.insert(0, Guard())
threading.Timer(6.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
from gateway.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_parkgate_run_imports_no_ingest_module(tmp_path: Path, shared_broker: Mosquitto
                                               ) -> None:
    cfg = write_config(tmp_path / "gw.yaml", base_config(
        tmp_path, shared_broker.port, [{"name": "sim-1", "driver": "sim", "interval": "100ms"}]))
    res = subprocess.run([sys.executable, "-c", GUARD, str(cfg)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=False)
    assert "FORBIDDEN IMPORT" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "uplink connected" in res.stdout


NO_PSYCOPG = """
import importlib.abc, sys
class NoPsycopg(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "psycopg":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoPsycopg())
from gateway.cli import main
sys.exit(main(["ingest", "-c", sys.argv[1]]))
"""


def test_ingest_without_its_extra_says_what_to_install() -> None:
    res = subprocess.run([sys.executable, "-c", NO_PSYCOPG,
                          str(ROOT / "config" / "ingest.example.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert res.returncode == 1
    assert "parkgate ingest needs psycopg: pip install 'parkgate[ingest]'" in res.stderr
    assert "Traceback" not in res.stderr

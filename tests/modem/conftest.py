"""Fixtures for the modem driver: a driver context, the Quectel emulator, a fake mmcli."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.quectel_modem import QuectelModem

from drivers.modem import ModemDriver, ModemOptions
from gateway.driver import DriverContext
from gateway.metrics import Metrics
from tests.support import Collector, Mosquitto
from tests.support import driver_context as make_ctx

RECORDED = Path(__file__).parent / "mmcli"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """Current value of a metric sample, None if the series does not exist."""
    return metrics.registry.get_sample_value(name, labels)


def build_driver(cfg: dict[str, Any], ctx: DriverContext | None = None) -> ModemDriver:
    """A ModemDriver from a config dict."""
    opts = ModemOptions.model_validate({"name": "modem", "driver": "modem", **cfg})
    return ModemDriver(opts, ctx or make_ctx(opts.name))


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[QuectelModem]:
    """An emulated RM500Q in LTE mode behind a stable symlink (like /dev/modem-at)."""
    m = QuectelModem("lte", link=tmp_path / "modem-at")
    await m.start()
    yield m
    await m.stop()


FAKE_MMCLI = '''#!{python}
"""Fake mmcli: prints recorded JSON from $FAKE_MMCLI_DIR, logs its arguments."""
import json, os, sys, time
d = os.environ["FAKE_MMCLI_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.log"), "a") as log:
    log.write(" ".join(args) + "\\n")
if os.path.exists(os.path.join(d, "sleep")):
    time.sleep(float(open(os.path.join(d, "sleep")).read()))
if "-L" in args:
    name = "list"
elif any(a.startswith("--signal-setup=") for a in args):
    print("successfully setup signal quality information")
    sys.exit(0)
elif "--signal-get" in args:
    name = "signal"
elif "--location-get" in args:
    name = "location"
else:
    name = "modem-" + args[args.index("-m") + 1].rsplit("/", 1)[-1]
path = os.path.join(d, name + ".json")
if not os.path.exists(path):
    sys.stderr.write("error: couldn't find modem\\n")
    sys.exit(1)
sys.stdout.write(open(path).read())
'''


class FakeMmcli:
    """A directory on PATH with an `mmcli` that answers from recorded JSON files."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "mmcli-data"
        self.bin = root / "bin"
        self.dir.mkdir()
        self.bin.mkdir()
        exe = self.bin / "mmcli"
        exe.write_text(FAKE_MMCLI.format(python=sys.executable))
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
        self.exe = str(exe)

    def use(self, **files: str) -> None:
        """Serve recorded files: use(list="list-one", signal="signal-lte", ...)."""
        for name, recorded in files.items():
            target = self.dir / f"{name.replace('_', '-')}.json"
            if recorded:
                shutil.copy(RECORDED / f"{recorded}.json", target)
            else:
                target.unlink(missing_ok=True)

    def calls(self) -> list[str]:
        log = self.dir / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def fake_mmcli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeMmcli:
    """A fake `mmcli` first on PATH."""
    fake = FakeMmcli(tmp_path)
    monkeypatch.setenv("FAKE_MMCLI_DIR", str(fake.dir))
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    return fake




@pytest.fixture
def modem_broker() -> Iterator[Mosquitto]:
    """A private broker; unlike the shared `broker` fixture it closes mosquitto's stderr pipe
    (left open it is a ResourceWarning, an error under filterwarnings=error)."""
    b = Mosquitto().start()
    pipe = b.proc.stderr if b.proc else None
    yield b
    b.close()
    if pipe is not None:
        pipe.close()


@pytest.fixture
def modem_collector(modem_broker: Mosquitto) -> Iterator[Collector]:
    """An MQTT collector on `modem_broker`."""
    c = Collector(modem_broker.port)
    yield c
    c.close()

"""Helpers for the BLE tests: recorded adverts and the replay script of the fake scanner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ble import fakes
from tests.ble.hci import parse_hci

ADVERTS = Path(__file__).parent / "adverts"


def recorded() -> list[dict[str, Any]]:
    """Every recorded capture, as {id, advert (fake-scanner form), expected...}."""
    out: list[dict[str, Any]] = []
    for path in sorted(ADVERTS.glob("*.json")):
        doc = json.loads(path.read_text())
        for cap in doc["captures"]:
            if "hci" in cap:
                advert = parse_hci(cap["hci"])
            else:
                advert = {"address": cap["address"], "name": None, "rssi": cap["rssi"],
                          "service_data": cap.get("bleak_service_data", {}),
                          "manufacturer_data": cap.get("bleak_manufacturer_data", {})}
            out.append({**cap, "advert": advert, "file": path.name})
    return out


def by_id(capture_id: str) -> dict[str, Any]:
    """One recorded capture by its id."""
    return next(c for c in recorded() if c["id"] == capture_id)


@pytest.fixture
def replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write the fake scanner's script and point it there; resets the fakes' counters."""
    fakes.ReplayScanner.starts = 0
    fakes.ReplayScanner.modes = []
    fakes.FakeGattClient.active = fakes.FakeGattClient.max_active = 0
    fakes.FakeGattClient.connects = 0
    fakes.FakeGattClient.writes = []
    fakes.FakeGattClient.written = {}

    def write(adverts: list[dict[str, Any]], *, interval: float = 0.02, repeat: bool = True,
              fail: dict[str, Any] | None = None, gatt: dict[str, Any] | None = None) -> Path:
        path = tmp_path / "replay.json"
        path.write_text(json.dumps({"interval": interval, "repeat": repeat,
                                    "adverts": adverts}))
        monkeypatch.setenv(fakes.REPLAY_ENV, str(path))
        if fail is not None:
            (tmp_path / "fail.json").write_text(json.dumps(fail))
            monkeypatch.setenv(fakes.FAIL_ENV, str(tmp_path / "fail.json"))
        if gatt is not None:
            (tmp_path / "gatt.json").write_text(json.dumps(gatt))
            monkeypatch.setenv(fakes.GATT_ENV, str(tmp_path / "gatt.json"))
        return path

    return write

"""Config validation: addressing conventions, types, profiles, merging, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.modbus import ModbusOptions
from drivers.modbus.profiles import BUNDLED_DIR, ProfileError, available, load
from drivers.modbus.registermap import parse_ref

TCP = {"type": "tcp", "host": "10.0.0.5"}
RTU = {"type": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "N"}


def opts(**cfg: Any) -> ModbusOptions:
    base = {"name": "m", "driver": "modbus", "transport": TCP, "unit": 1}
    return ModbusOptions.model_validate({**base, **cfg})


def error(**cfg: Any) -> str:
    with pytest.raises(ValidationError) as info:
        opts(**cfg)
    return "\n".join(str(e["msg"]) for e in info.value.errors())


@pytest.mark.parametrize(("ref", "table", "address"), [
    (1, "coil", 0), (9999, "coil", 9998), (10001, "discrete", 0), (30001, "input", 0),
    (30007, "input", 6), (40001, "holding", 0), (49999, "holding", 9998),
    (300001, "input", 0), (465536, "holding", 65535), ("040001", "coil", 40000),
    (100001, "discrete", 0),
])
def test_modicon_references(ref: int | str, table: str, address: int) -> None:
    assert parse_ref(ref) == (table, address)


@pytest.mark.parametrize(("ref", "message"), [
    (40000, "count from 1"), (30000, "count from 1"), (20001, "leading digit"),
    (465537, "beyond the last register"), ("4x0001", "not a Modicon reference"),
])
def test_bad_references(ref: int | str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ref(ref)


def test_address_and_ref_give_the_same_point() -> None:
    a = opts(registers=[{"name": "v", "table": "input", "address": 6, "type": "float32"}])
    b = opts(registers=[{"name": "v", "ref": 30007, "type": "float32"}])
    assert a.points() == b.points()
    assert a.points()[0].describe() == "input 6..7"


@pytest.mark.parametrize(("register", "message"), [
    ({"name": "v", "address": 6}, "needs `table:`"),
    ({"name": "v", "address": 6, "ref": 30007}, "not both"),
    ({"name": "v", "ref": 30007, "table": "holding"}, "is a input reference"),
    ({"name": "v"}, "neither `address`"),
    ({"name": "v", "ref": 1, "type": "uint16"}, "use type: bool"),
    ({"name": "v", "ref": 40001, "type": "bool"}, "type: bit and bit: N"),
    ({"name": "v", "ref": 40001, "type": "bit"}, "needs `bit: N`"),
    ({"name": "v", "ref": 40001, "type": "string"}, "needs `count:`"),
    ({"name": "v", "ref": 40001, "count": 4}, "only for strings"),
    ({"name": "v", "ref": 40001, "type": "string", "count": 2, "scale": 2}, "apply to numbers"),
    ({"name": "v", "ref": 40001, "scale": 0}, "scale 0"),
    ({"name": "v", "ref": 465535, "type": "float64"}, "runs past address 65535"),
    ({"name": "v", "ref": 40001, "interval": "1.5s"}, "multiple of the device interval"),
    ({"name": "v", "ref": 40001, "interval": "500ms"}, "multiple of the device interval"),
    ({"name": "v", "ref": 40001, "type": "int128"}, "Input should be"),
])
def test_register_errors_are_clear(register: dict[str, Any], message: str) -> None:
    assert message in error(interval="1s", registers=[register])


def test_unit_range_on_rtu_and_nothing_to_read() -> None:
    assert "1..247" in error(transport=RTU, unit=0, registers=[{"name": "v", "ref": 40001}])
    assert "nothing to read" in error()
    opts(unit=0, registers=[{"name": "v", "ref": 40001}])  # fine on TCP


def test_duplicate_names() -> None:
    assert "duplicate register names: v" in error(registers=[
        {"name": "v", "ref": 40001}, {"name": "v", "ref": 40002}])


def test_intervals_become_poll_multiples() -> None:
    o = opts(interval="1s", registers=[{"name": "fast", "ref": 40001},
                                       {"name": "slow", "ref": 40002, "interval": "1m"}])
    assert [p.every for p in o.points()] == [1, 60]


def test_scaled_integers_get_decimals_from_the_scale() -> None:
    o = opts(registers=[{"name": "v", "ref": 40001, "scale": 0.1},
                        {"name": "f", "ref": 40002, "scale": 0.01, "offset": -0.5},
                        {"name": "g", "ref": 40003, "type": "float32", "scale": 0.1}])
    assert [p.decimals for p in o.points()] == [1, 2, None]


def test_bundled_profiles_all_load_and_cite_their_source() -> None:
    names = available()
    for expected in ("eastron-sdm120", "eastron-sdm630", "chint-dtsu666",
                     "schneider-iem3000", "janitza-umg96rm"):
        assert names[expected].parent == BUNDLED_DIR
    for name, path in names.items():
        text = path.read_text()
        assert "# Source:" in text, name
        assert "verified" in text, name
        o = opts(profile=name)
        assert len(o.points()) >= 10


def test_profile_defaults_and_limits() -> None:
    o = opts(profile="eastron-sdm630")
    v1 = o.points()[0]
    assert (v1.name, v1.table, v1.address, v1.type, v1.unit) == (
        "voltage_l1", "input", 0, "float32", "V")
    assert o.limits() == (80, 10)
    assert opts(profile="eastron-sdm630", max_registers=40, max_gap=0).limits() == (40, 0)
    iem = {p.name: p for p in opts(profile="schneider-iem3000").points()}
    assert (iem["current_l1"].address, iem["energy_import"].type) == (2999, "int64")


def test_device_patches_replaces_adds_and_filters_profile_registers() -> None:
    o = opts(profile="eastron-sdm120", interval="1s",
             exclude=["phase_angle"],
             registers=[
                 {"name": "energy_import", "interval": "1m"},          # patch
                 {"name": "voltage", "ref": 30001, "type": "float32",   # replace
                  "unit": "mV", "scale": 1000},
                 {"name": "serial", "ref": 40043, "type": "uint32"},   # add
             ])
    by = {p.name: p for p in o.points()}
    assert "phase_angle" not in by
    assert (by["energy_import"].every, by["energy_import"].unit) == (60, "kWh")
    assert (by["voltage"].unit, by["voltage"].scale) == ("mV", 1000)
    assert (by["serial"].table, by["serial"].address) == ("holding", 42)
    only = opts(profile="eastron-sdm120", only=["voltage", "current"])
    assert [p.name for p in only.points()] == ["voltage", "current"]


def test_profile_errors_are_clear(tmp_path: Path) -> None:
    msg = error(profile="eastron-sdm63")
    assert "profile 'eastron-sdm63' not found" in msg
    assert "did you mean 'eastron-sdm630'" in msg
    assert "voltage_x not in profile eastron-sdm120" in error(profile="eastron-sdm120",
                                                             exclude=["voltage_x"])
    assert "is not in profile eastron-sdm120 and says neither" in error(
        profile="eastron-sdm120", registers=[{"name": "nope", "unit": "V"}])
    assert "`only` and `exclude` pick registers of a profile" in error(
        only=["a"], registers=[{"name": "v", "ref": 40001}])
    bad = tmp_path / "broken.yaml"
    bad.write_text("profile: broken\nmanufacturer: X\nmodel: Y\nregisters:\n"
                   "  - {name: a, ref: 40001\n")
    assert "YAML error at line" in error(profile=str(bad))
    bad.write_text("profile: broken\nmanufacturer: X\nmodel: Y\nregisters:\n"
                   "  - {name: a, ref: 40001, tpye: float32}\n")
    assert "line 5: registers.0.tpye: unknown key" in error(profile=str(bad))
    mine = tmp_path / "mine.yaml"
    mine.write_text("profile: other\nmanufacturer: X\nmodel: Y\nregisters:\n"
                    "  - {name: a, ref: 40001}\n")
    assert "must match its file name 'mine'" in error(profile="mine",
                                                     profile_dirs=[str(tmp_path)])


def test_profile_dirs_come_first_and_edits_are_seen(tmp_path: Path) -> None:
    own = tmp_path / "eastron-sdm120.yaml"
    own.write_text("profile: eastron-sdm120\nmanufacturer: X\nmodel: Y\nregisters:\n"
                   "  - {name: a, ref: 40001}\n")
    assert [p.name for p in opts(profile="eastron-sdm120",
                                 profile_dirs=[str(tmp_path)]).points()] == ["a"]
    own.write_text(own.read_text() + "  - {name: b, ref: 40002, type: int16}\n")
    assert [p.name for p in load("eastron-sdm120", [str(tmp_path)]).profile.registers] == [
        "a", "b"]
    with pytest.raises(ProfileError, match="does not exist"):
        load(str(tmp_path / "missing.yaml"))


def test_the_sample_config_is_valid() -> None:
    from gateway.config import load_config

    loaded = load_config(Path(__file__).resolve().parents[2] / "drivers/modbus/sample.yaml")
    devices = {d.name: d for d in loaded.config.devices}
    assert set(devices) == {"main-meter", "pv-meter", "hall-b-meter", "chiller-meter",
                            "boiler-plc"}
    plc = devices["boiler-plc"]
    assert isinstance(plc, ModbusOptions)
    by = {p.name: p for p in plc.points()}
    assert (by["return_temp"].table, by["return_temp"].address) == ("holding", 17)
    assert (by["low_water"].table, by["low_water"].address) == ("discrete", 2)
    assert plc.limits() == (60, 4)

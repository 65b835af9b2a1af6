"""Encoding for writes: the exact inverse of decode.py, and `write:` where Modbus can write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from emulators.modbus_meter import encode as emulator_encode
from emulators.modbus_meter import points_of

from drivers.modbus.decode import decode_values
from drivers.modbus.encode import encode_words, raw_value, with_bit
from drivers.modbus.profiles import ProfileError, load
from gateway.config import ConfigProblems, load_config
from gateway.errors import WriteRefused

from .test_driver_tcp import EXACT, ORDERS


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("dtype", "value"), list(EXACT.items()))
def test_every_type_and_order_round_trips_and_matches_the_emulator(
        dtype: str, value: Any, order: str) -> None:
    (p,) = points_of([{"name": "x", "table": "holding", "address": 0, "type": dtype,
                       "order": order}])
    words = encode_words(p, value)
    assert words == emulator_encode(value, p)  # an independent encoder agrees
    assert decode_values(words, p) == [value]


@pytest.mark.parametrize(("spec", "value", "raw"), [
    ({"type": "int16", "scale": 0.1}, 21.5, 215),
    ({"type": "int16", "scale": 0.1}, -0.05, -1),  # half away from zero, not to even
    ({"type": "int16", "scale": 0.1}, 0.25, 3),
    ({"type": "uint16", "scale": 0.01}, 655.35, 65535),
    ({"type": "int32", "scale": 0.001, "offset": -40}, 21.5, 61500),
    ({"type": "uint16", "offset": 100}, 150, 50),
    ({"type": "float32", "scale": 2}, 5.0, 2.5),
])
def test_scale_and_offset_are_undone_in_decimal(spec: dict[str, Any], value: float,
                                                raw: float) -> None:
    (p,) = points_of([{"name": "x", "table": "holding", "address": 0, **spec}])
    assert raw_value(p, value) == raw
    got = decode_values(encode_words(p, value), p)[0]
    assert got == pytest.approx(round(raw * (p.scale or 1) + (p.offset or 0), 9))


@pytest.mark.parametrize(("spec", "value", "words"), [
    ({"type": "uint16"}, -1, "-1 in the register, outside uint16 (0..65535)"),
    ({"type": "uint16"}, 65536, "outside uint16"),
    ({"type": "int16", "scale": 0.1}, 3276.8, "32768 in the register, outside int16"),
    ({"type": "uint32", "offset": 10}, 5, "outside uint32"),
    ({"type": "float32"}, 3.5e38, "does not fit a float32"),
    ({"type": "float64"}, float("inf"), "cannot be written"),
])
def test_what_does_not_fit_the_type_is_refused(spec: dict[str, Any], value: float,
                                               words: str) -> None:
    (p,) = points_of([{"name": "x", "table": "holding", "address": 0, **spec}])
    with pytest.raises(WriteRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
        encode_words(p, value)


def test_with_bit() -> None:
    assert with_bit(0xA5A1, 3, True) == 0xA5A9
    assert with_bit(0xA5A9, 3, False) == 0xA5A1
    assert with_bit(0xFFFF, 15, False) == 0x7FFF
    assert with_bit(0x0000, 15, True) == 0x8000


def test_write_where_modbus_cannot_write_is_a_check_error_at_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("""\
gateway: {id: gw, site: s}
buffer: {path: /tmp/parkgate-test-writes.db}
uplink: {mqtt: {brokers: ["mqtt://127.0.0.1:1883"]}}
devices:
  - name: plc
    driver: modbus
    transport: {type: tcp, host: 127.0.0.1}
    unit: 1
    registers:
      - {name: sp, table: holding, address: 30, type: int16, write: {min: 5, max: 80}}
      - name: flow
        ref: 30005
        write: {max: 3}
      - {name: low, table: discrete, address: 2, write: {}}
      - {name: fw, table: holding, address: 100, type: string, count: 4, write: {}}
  - name: meter
    driver: modbus
    transport: {type: tcp, host: 127.0.0.1}
    unit: 2
    profile: eastron-sdm120
    registers:
      - {name: voltage, write: {min: 1}}
""")
    with pytest.raises(ConfigProblems) as caught:
        load_config(cfg)
    lines = str(caught.value).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{cfg}:13:16: devices.0.registers.1.write: register 'flow': "
                               "input registers are read-only in Modbus")
    assert lines[1].startswith(f"{cfg}:14:") and "devices.0.registers.2.write" in lines[1]
    assert "discrete inputs are read-only" in lines[1]
    assert "devices.0.registers.3.write: register 'fw': strings cannot be written" in lines[2]
    assert lines[3].startswith(f"{cfg}:22:") and "devices.1.registers.0.write" in lines[3]


def test_a_profile_cannot_make_anything_writable(tmp_path: Path) -> None:
    f = tmp_path / "plc.yaml"
    f.write_text("profile: plc\nmanufacturer: x\nmodel: y\nregisters:\n"
                 "  - {name: sp, table: holding, address: 1, write: {}}\n")
    with pytest.raises(ProfileError, match="sp: `write:` belongs in a device's own"):
        load(str(f))

"""Decoders against their format owners' published vectors and recorded real adverts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble import atc, bthome, ibeacon, ruuvi
from drivers.ble.advert import (
    BTHOME_UUID,
    ENV_SENSING_UUID,
    Decoded,
    decode_advert,
    normalize_mac,
    normalize_uuid,
)
from tests.ble.conftest import recorded
from tests.ble.hci import parse_ad

# --- BTHome v2 -------------------------------------------------------------------------
# Every example of the "Sensor data", "Binary sensor data", "Events", "Device information"
# and "Packet id" tables of https://bthome.io/format/ (home-assistant/bthome.io,
# src/format.html): object bytes -> (name, value).
BTHOME_FORMAT_EXAMPLES: list[tuple[str, str, Any]] = [
    ("518756", "acceleration", 22.151), ("0161", "battery", 97), ("12E204", "co2", 1250),
    ("56E803", "conductivity", 1000), ("0960", "count", 96), ("3D0960", "count", 24585),
    ("3E2A2C0960", "count", 1611213866), ("59EA", "count", -22), ("5AEAEA", "count", -5398),
    ("5BEA0234EA", "count", -365690134), ("434E34", "current", 13.39),
    ("5D02EA", "current", -5.63), ("08CA06", "dewpoint", 17.38), ("400C00", "distance", 12),
    ("414E00", "distance", 7.8), ("424E3400", "duration", 13.39),
    ("4d12138a14", "energy", 344593.17), ("0A138A14", "energy", 1346.067),
    ("4B138A14", "gas", 1346.067), ("4C41018A01", "gas", 25821.505),
    ("528756", "gyroscope", 22.151), ("03BF13", "humidity", 50.55), ("2E23", "humidity", 35),
    ("05138A14", "illuminance", 13460.67), ("065E1F", "mass", 80.3), ("073E1D", "mass", 74.86),
    ("14020C", "moisture", 30.74), ("2F23", "moisture", 35), ("0D120C", "pm25", 3090),
    ("0E021C", "pm10", 7170), ("0B021B00", "power", 69.14), ("5C02FBFFFF", "power", -12.78),
    ("04138A01", "pressure", 1008.83), ("3F020C", "rotation", 307.4),
    ("444E34", "speed", 133.9), ("57EA", "temperature", -22), ("58EA", "temperature", -7.7),
    ("451101", "temperature", 27.3), ("02CA09", "temperature", 25.06),
    ("133301", "tvoc", 307), ("0C020C", "voltage", 3.074), ("4A020C", "voltage", 307.4),
    ("4E87562A01", "volume", 19551.879), ("478756", "volume", 2215.1),
    ("48DC87", "volume", 34780), ("5587562A01", "volume_storage", 19551.879),
    ("49DC87", "volume_flow_rate", 34.78), ("4632", "uv_index", 5.0),
    ("4F87562A01", "water", 19551.879), ("5E9F8C", "direction", 359.99),
    # precipitation's factor is 0.1 mm: 0x0FA0 = 4000 -> 400.0 mm (was taken as 4000 mm)
    ("5FA00F", "precipitation", 400.0), ("505d396164", "timestamp", 1684093277),
    # 0x60-0x64: bthome-ble's vectors for them; 0x65 (uint8, factor 1) built from the table
    ("6001", "channel", 1), ("61AC0D", "rotational_speed", 3500),
    ("624099DFFF", "speed", -2.123456), ("630057D0FF", "acceleration", -3.123456),
    ("6402", "light_level", 2), ("6503", "settings_revision", 3),
    ("530C48656C6C6F20576F726C6421", "text", "Hello World!"),
    ("540C48656C6C6F20576F726C6421", "raw", "48656c6c6f20576f726c6421"),
    ("1501", "battery_low", True), ("1601", "battery_charging", True),
    ("1700", "carbon_monoxide", False), ("1A00", "door", False), ("2101", "motion", True),
    ("2D01", "window", True), ("3A01", "button", "press"), ("3A04", "button", "long_press"),
    ("3A80", "button", "hold_press"), ("3A81", "button", "hold_release"),
    ("3B0002", "command", "toggle"), ("3C0103", "dimmer", -3), ("3C020A", "dimmer", 10),
    ("F00100", "device_type_id", 1), ("F100010204", "firmware_version", "4.2.1.0"),
    ("F2000106", "firmware_version", "6.1.0"),
]


@pytest.mark.parametrize(("obj", "name", "value"), BTHOME_FORMAT_EXAMPLES)
def test_bthome_format_table_examples(obj: str, name: str, value: Any) -> None:
    decoded = bthome.decode(bytes.fromhex("40" + obj))
    assert decoded is not None
    assert decoded.error is None
    assert [(v.name, v.value) for v in decoded.values] == [(name, value)]


def test_bthome_packet_id_example() -> None:
    decoded = bthome.decode(bytes.fromhex("400009"))
    assert decoded is not None
    assert decoded.packet_id == 9
    assert decoded.values == ()


def test_bthome_full_advertising_payload_example() -> None:
    # bthome.io/format "Advertising payload": flags, name "DIY-sensor", service data
    advert = parse_ad(bytes.fromhex("0201060B094449592D73656E736F720A16D2FC4002C40903BF13"))
    assert advert["name"] == "DIY-sensor"
    decoded = decode_advert({k: bytes.fromhex(v) for k, v in advert["service_data"].items()},
                            {})
    assert decoded is not None
    assert decoded.format == "bthome"
    assert {v.name: (v.value, v.unit) for v in decoded.values} == {
        "temperature": (25.0, "°C"), "humidity": (50.55, "%")}


def test_bthome_repeated_types_get_suffixes() -> None:
    # bthome.io/format "Multiple measurements of the same type": temperature, temperature_2;
    # "Multiple events": 3A003A01 is no event for the first button, a press of the second
    decoded = bthome.decode(bytes.fromhex("4002CA0902C4093A003A01"))
    assert decoded is not None
    assert [(v.name, v.value, v.event) for v in decoded.values] == [
        ("temperature", 25.06, False), ("temperature_2", 25.0, False),
        ("button_2", "press", True)]


def test_bthome_unknown_event_codes_are_no_events_and_decoding_goes_on() -> None:
    # button 0xFE, dimmer 0x07 and command opcode 0x09 are not in the spec's tables: no
    # event, but their length is known, so the battery after them is still decoded
    decoded = bthome.decode(bytes.fromhex("40 3AFE 3A02 3B02090102 3C0705 0161"))
    assert decoded is not None
    assert decoded.error is None
    assert [(v.name, v.value, v.event) for v in decoded.values] == [
        ("button_2", "double_press", True), ("battery", 97, False)]


def test_bthome_command_with_arguments() -> None:
    # bthome.io/format "Commands": 3B010305 is "step up" with one argument byte, 5
    decoded = bthome.decode(bytes.fromhex("403B010305"))
    assert decoded is not None
    assert [(v.name, v.value, v.event) for v in decoded.values] == [
        ("command", "step_up", True), ("command_args", "05", True)]


def test_bthome_unknown_object_stops_decoding_but_keeps_earlier_values() -> None:
    decoded = bthome.decode(bytes.fromhex("4002CA09EE0103BF13"))
    assert decoded is not None
    assert [v.name for v in decoded.values] == ["temperature"]
    assert decoded.error is not None
    assert "unknown object id 0xee" in decoded.error
    assert "length is not known" in decoded.error
    assert "4 byte(s) after it were not decoded" in decoded.error


def test_bthome_new_objects_after_known_ones_are_not_lost() -> None:
    # the advert: fcd2:4061ac0d was "unknown object id 0x61"; and what follows it
    decoded = bthome.decode(bytes.fromhex("40 61AC0D 6001 0161"))
    assert decoded is not None
    assert decoded.error is None
    assert [(v.name, v.value, v.unit) for v in decoded.values] == [
        ("rotational_speed", 3500, "rpm"), ("channel", 1, None), ("battery", 97, "%")]


def test_bthome_plaintext_from_a_keyed_sensor_is_refused() -> None:
    # the advert: a plaintext 23.56 °C "from" a sensor that has a bindkey
    decoded = decode_advert({BTHOME_UUID: bytes.fromhex("40023409")}, {}, address=ENC_MAC,
                            bindkey=ENC_KEY)
    assert decoded is not None
    assert decoded.refused == "plaintext"
    assert decoded.values == ()
    assert decoded.error is not None
    assert "bindkey" in decoded.error
    # without a key the same advert is an ordinary plaintext reading
    plain = decode_advert({BTHOME_UUID: bytes.fromhex("40023409")}, {}, address=ENC_MAC)
    assert plain is not None
    assert plain.refused is None
    assert [(v.name, v.value) for v in plain.values] == [("temperature", 23.56)]


def test_bthome_legacy_mac_included_flag() -> None:
    # bit 1 of the device info byte ("MAC included" in early v2 firmware; reserved now):
    # vectors of bthome-ble's tests/test_parser_v2.py (test_bthome_with_mac[_encrypted])
    plain = bthome.decode(bytes.fromhex("42b2188d38c1a404138a01"))
    assert plain is not None
    assert plain.error is None
    assert [(v.name, v.value) for v in plain.values] == [("pressure", 1008.83)]
    assert plain.info["mac"] == "A4:C1:38:8D:18:B2"
    enc = bthome.decode(bytes.fromhex("43a5808fe64854f196c06ffb4900112233f08ecbde"),
                        address=None, bindkey=ENC_KEY)
    assert enc is not None
    assert enc.error is None
    assert {v.name: v.value for v in enc.values} == {"temperature": 25.06, "humidity": 50.55}
    assert enc.info["mac"] == ENC_MAC
    assert bthome.decode(bytes.fromhex("42b2188d")) == Decoded(
        "bthome", error="truncated embedded MAC address")


# bthome.io/encryption: key, MAC and the encrypted service data of its worked example,
# which decrypts to 02CA09 03BF13 (25.06 °C, 50.55 %), counter 0x33221100 little endian.
ENC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
ENC_MAC = "54:48:E6:8F:80:A5"
ENC_SERVICE_DATA = bytes.fromhex("d2fc41e445f3c9962b332211006c7c4519")


def test_bthome_encryption_example_decrypts() -> None:
    decoded = decode_advert({BTHOME_UUID: ENC_SERVICE_DATA[2:]}, {}, address=ENC_MAC,
                            bindkey=ENC_KEY)
    assert decoded is not None
    assert decoded.error is None
    assert {v.name: v.value for v in decoded.values} == {"temperature": 25.06,
                                                         "humidity": 50.55}
    assert decoded.info["counter"] == 1122867
    assert decoded.packet_id == 1122867


@pytest.mark.parametrize(("address", "key", "data", "expect"), [
    (ENC_MAC, None, ENC_SERVICE_DATA[2:], "bindkey"),
    (None, ENC_KEY, ENC_SERVICE_DATA[2:], "MAC address"),
    (ENC_MAC, bytes(16), ENC_SERVICE_DATA[2:], "decryption failed"),
    ("54:48:E6:8F:80:A6", ENC_KEY, ENC_SERVICE_DATA[2:], "decryption failed"),
    (ENC_MAC, ENC_KEY, ENC_SERVICE_DATA[2:-1] + b"\x00", "decryption failed"),
    (ENC_MAC, ENC_KEY, bytes.fromhex("41e445"), "too short"),
])
def test_bthome_encryption_failures_are_values_not_exceptions(
        address: str | None, key: bytes | None, data: bytes, expect: str) -> None:
    decoded = bthome.decode(data, address=address, bindkey=key)
    assert decoded is not None
    assert decoded.values == ()
    assert decoded.error is not None
    assert expect in decoded.error


def test_bthome_v1_and_other_versions_are_not_bthome_v2() -> None:
    assert bthome.decode(bytes.fromhex("2002CA09")) is None  # version bits 001
    assert bthome.decode(b"") is None


# --- Ruuvi RAWv2 ------------------------------------------------------------------------
# Test vectors of ruuvi/ruuvi-sensor-protocols dataformat_05.md (also on docs.ruuvi.com,
# "Data format 5 (RAWv2)"): valid data, maximum values, minimum values, invalid values.
RUUVI_VALID = {"temperature": 24.3, "humidity": 53.49, "pressure": 1000.44,
               "acceleration_x": 0.004, "acceleration_y": -0.004, "acceleration_z": 1.036,
               "battery_voltage": 2.977, "tx_power": 4, "movement_counter": 66,
               "measurement_sequence": 205}
RUUVI_MAX = {"temperature": 163.835, "humidity": 163.835, "pressure": 1155.34,
             "acceleration_x": 32.767, "acceleration_y": 32.767, "acceleration_z": 32.767,
             "battery_voltage": 3.646, "tx_power": 20, "movement_counter": 254,
             "measurement_sequence": 65534}
RUUVI_MIN = {"temperature": -163.835, "humidity": 0.0, "pressure": 500.0,
             "acceleration_x": -32.767, "acceleration_y": -32.767, "acceleration_z": -32.767,
             "battery_voltage": 1.6, "tx_power": -40, "movement_counter": 0,
             "measurement_sequence": 0}


@pytest.mark.parametrize(("raw", "expected"), [
    ("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F", RUUVI_VALID),
    ("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F", RUUVI_MAX),
    ("058001000000008001800180010000000000CBB8334C884F", RUUVI_MIN),
])
def test_ruuvi_rawv2_vectors(raw: str, expected: dict[str, float]) -> None:
    decoded = ruuvi.decode(bytes.fromhex(raw))
    assert decoded is not None
    assert decoded.error is None
    assert {v.name: v.value for v in decoded.values} == pytest.approx(expected)
    assert decoded.info["mac"] == "CB:B8:33:4C:88:4F"


def test_ruuvi_rawv2_invalid_vector_has_no_values() -> None:
    decoded = ruuvi.decode(bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"))
    assert decoded is not None
    assert decoded.error is None
    assert decoded.values == ()
    assert decoded.info == {}
    assert decoded.packet_id is None


def test_ruuvi_other_formats_are_reported_not_guessed() -> None:
    # RAWv1 "valid data" vector from docs.ruuvi.com data format 3: recognised, not decoded
    decoded = ruuvi.decode(bytes.fromhex("03291A1ECE1EFC18F94202CA0B53"))
    assert decoded is not None
    assert decoded.values == ()
    assert decoded.error is not None
    assert "format 3" in decoded.error


# --- ATC1441 / pvvx ---------------------------------------------------------------------
def test_atc1441_readme_layout_example() -> None:
    # atc1441/ATC_MiThermometer README "Advertising format of the custom firmware":
    # 0x0e,0x16,0x1a,0x18 (length, type, UUID) then MAC 00.., temp aaaa, hum bb, batt cc,
    # mV dddd, counter 00: a layout illustration that pins every field to its bytes. Its
    # length byte (0x0e) predates the mV field; real captures carry 0x10 (see adverts/).
    example = bytes([0x0E, 0x16, 0x1A, 0x18, 0, 0, 0, 0, 0, 0,
                     0xAA, 0xAA, 0xBB, 0xCC, 0xDD, 0xDD, 0x00])
    decoded = decode_advert({ENV_SENSING_UUID: example[4:]}, {})
    assert decoded is not None
    assert decoded.format == "atc"
    assert {v.name: v.value for v in decoded.values} == {
        "temperature": -2184.6, "humidity": 0xBB, "battery": 0xCC, "battery_voltage": 56.797}
    assert decoded.packet_id == 0
    # taken at its word, the stale length cuts the frame: an error value, not an exception
    advert = parse_ad(example)
    cut = decode_advert({k: bytes.fromhex(v) for k, v in advert["service_data"].items()}, {})
    assert cut is not None
    assert cut.values == ()
    assert cut.error is not None


def test_pvvx_readme_struct() -> None:
    # pvvx/ATC_MiThermometer README "Custom format (all data little-endian)": MAC[6] lo..hi,
    # int16 temperature x0.01, uint16 humidity x0.01, uint16 mV, uint8 %, uint8 counter,
    # uint8 flags. Built field by field from that struct (the README gives no hex sample).
    frame = (bytes.fromhex("B2188D38C1A4") + (-1234).to_bytes(2, "little", signed=True)
             + (9999).to_bytes(2, "little") + (3001).to_bytes(2, "little")
             + bytes([100, 7, 0x01]))
    decoded = atc.decode(frame)
    assert decoded is not None
    assert decoded.format == "pvvx"
    assert {v.name: v.value for v in decoded.values} == {
        "temperature": -12.34, "humidity": 99.99, "battery_voltage": 3.001, "battery": 100,
        "reed_switch": True}
    assert decoded.packet_id == 7
    assert decoded.info["mac"] == "A4:C1:38:8D:18:B2"


def test_atc_unknown_length_is_an_error_value() -> None:
    decoded = atc.decode(bytes(11))  # pvvx encrypted frames are 11 bytes
    assert decoded is not None
    assert decoded.error is not None
    assert decoded.values == ()


def test_forced_format_mismatch_is_reported() -> None:
    decoded = decode_advert({ENV_SENSING_UUID: bytes.fromhex("a4c1380283f400a22f5f0bf819")},
                            {}, fmt="pvvx")
    assert decoded is not None
    assert decoded.error is not None
    assert "atc" in decoded.error


# --- iBeacon ----------------------------------------------------------------------------
def test_ibeacon_requires_the_ibeacon_prefix() -> None:
    assert ibeacon.decode(bytes.fromhex("1005031c6e1f59")) is None  # Apple "nearby" frame
    short = ibeacon.decode(bytes.fromhex("0215e2c56db5"))
    assert short is not None
    assert short.error is not None


# --- recorded real adverts ----------------------------------------------------------------
@pytest.mark.parametrize("cap", recorded(), ids=lambda c: c["id"])
def test_recorded_adverts_decode_to_their_published_values(cap: dict[str, Any]) -> None:
    advert = cap["advert"]
    assert advert["address"] == cap["address"]
    assert advert["rssi"] == cap["rssi"]
    decoded = decode_advert(
        {k: bytes.fromhex(v) for k, v in advert["service_data"].items()},
        {int(k, 0): bytes.fromhex(v) for k, v in advert["manufacturer_data"].items()},
        address=advert["address"])
    assert decoded is not None
    assert decoded.error is None
    assert decoded.format == cap["format"]
    assert decoded.packet_id == cap["packet_id"]
    assert {v.name: v.value for v in decoded.values
            if v.name in cap["values"]} == pytest.approx(cap["values"])
    for key, value in cap.get("info", {}).items():
        assert decoded.info[key] == value


# --- helpers --------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "full"), [
    ("fcd2", "0000fcd2-0000-1000-8000-00805f9b34fb"),
    ("0xFCD2", "0000fcd2-0000-1000-8000-00805f9b34fb"),
    ("0000FCD2-0000-1000-8000-00805F9B34FB", "0000fcd2-0000-1000-8000-00805f9b34fb"),
])
def test_normalize_uuid(text: str, full: str) -> None:
    assert normalize_uuid(text) == full


def test_normalize_mac() -> None:
    assert normalize_mac("a4c1380283f4") == "A4:C1:38:02:83:F4"
    assert normalize_mac("a4-c1-38-02-83-f4") == "A4:C1:38:02:83:F4"
    with pytest.raises(ValueError, match="Bluetooth address"):
        normalize_mac("a4:c1:38")


# --- robustness: random and truncated adverts never raise ----------------------------------
KEYS = st.one_of(st.none(), st.just(ENC_KEY), st.binary(min_size=16, max_size=16))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64), key=KEYS)
def test_decoders_never_raise_on_random_bytes(data: bytes, key: bytes | None) -> None:
    for result in (bthome.decode(data, address=ENC_MAC, bindkey=key), ruuvi.decode(data),
                   atc.decode(data), ibeacon.decode(data)):
        assert result is None or isinstance(result, Decoded)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=40), flip=st.integers(0, 255),
       at=st.integers(0, 40))
def test_truncated_and_corrupted_real_adverts_never_raise(cut: int, flip: int,
                                                          at: int) -> None:
    sources = [bytes.fromhex("40003f015e02820803ac170c830b"), ENC_SERVICE_DATA[2:],
               bytes.fromhex("05138a5f61c4f0ffe4ffdc0414c5b6ec29b3f27a52fad4cd"),
               bytes.fromhex("f4830238c1a4a9066911b60b58f70d"),
               bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e000640000c5")]
    for raw in sources:
        data = bytearray(raw[:cut])
        if data:
            data[at % len(data)] ^= flip
        for uuid, company in ((BTHOME_UUID, None), (ENV_SENSING_UUID, None),
                              (None, 0x0499), (None, 0x004C)):
            result = decode_advert({uuid: bytes(data)} if uuid else {},
                                   {company: bytes(data)} if company else {},
                                   address=ENC_MAC, bindkey=ENC_KEY)
            assert result is None or isinstance(result, Decoded)

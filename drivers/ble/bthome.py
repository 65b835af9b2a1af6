"""BTHome v2 service data (UUID 0xFCD2), plain or AES-CCM encrypted, per bthome.io/format
(the edition in SPEC_VERSION)."""

from __future__ import annotations

from typing import NamedTuple

from drivers.ble.advert import Decoded, Scalar, Value, mac_bytes


class _Obj(NamedTuple):
    name: str
    size: int
    signed: bool
    factor: float
    unit: str | None


# Object id -> layout, from the "Sensor data" table of BTHome v2 (bthome.io/format, see
# SPEC_VERSION): name, bytes, signed, factor, unit.
_SENSORS: dict[int, _Obj] = {
    0x01: _Obj("battery", 1, False, 1, "%"),
    0x02: _Obj("temperature", 2, True, 0.01, "°C"),
    0x03: _Obj("humidity", 2, False, 0.01, "%"),
    0x04: _Obj("pressure", 3, False, 0.01, "hPa"),
    0x05: _Obj("illuminance", 3, False, 0.01, "lx"),
    0x06: _Obj("mass", 2, False, 0.01, "kg"),
    0x07: _Obj("mass", 2, False, 0.01, "lb"),
    0x08: _Obj("dewpoint", 2, True, 0.01, "°C"),
    0x09: _Obj("count", 1, False, 1, None),
    0x0A: _Obj("energy", 3, False, 0.001, "kWh"),
    0x0B: _Obj("power", 3, False, 0.01, "W"),
    0x0C: _Obj("voltage", 2, False, 0.001, "V"),
    0x0D: _Obj("pm25", 2, False, 1, "µg/m³"),
    0x0E: _Obj("pm10", 2, False, 1, "µg/m³"),
    0x12: _Obj("co2", 2, False, 1, "ppm"),
    0x13: _Obj("tvoc", 2, False, 1, "µg/m³"),
    0x14: _Obj("moisture", 2, False, 0.01, "%"),
    0x2E: _Obj("humidity", 1, False, 1, "%"),
    0x2F: _Obj("moisture", 1, False, 1, "%"),
    0x3D: _Obj("count", 2, False, 1, None),
    0x3E: _Obj("count", 4, False, 1, None),
    0x3F: _Obj("rotation", 2, True, 0.1, "°"),
    0x40: _Obj("distance", 2, False, 1, "mm"),
    0x41: _Obj("distance", 2, False, 0.1, "m"),
    0x42: _Obj("duration", 3, False, 0.001, "s"),
    0x43: _Obj("current", 2, False, 0.001, "A"),
    0x44: _Obj("speed", 2, False, 0.01, "m/s"),
    0x45: _Obj("temperature", 2, True, 0.1, "°C"),
    0x46: _Obj("uv_index", 1, False, 0.1, None),
    0x47: _Obj("volume", 2, False, 0.1, "L"),
    0x48: _Obj("volume", 2, False, 1, "mL"),
    0x49: _Obj("volume_flow_rate", 2, False, 0.001, "m³/h"),
    0x4A: _Obj("voltage", 2, False, 0.1, "V"),
    0x4B: _Obj("gas", 3, False, 0.001, "m³"),
    0x4C: _Obj("gas", 4, False, 0.001, "m³"),
    0x4D: _Obj("energy", 4, False, 0.001, "kWh"),
    0x4E: _Obj("volume", 4, False, 0.001, "L"),
    0x4F: _Obj("water", 4, False, 0.001, "L"),
    0x50: _Obj("timestamp", 4, False, 1, "s"),
    0x51: _Obj("acceleration", 2, False, 0.001, "m/s²"),
    0x52: _Obj("gyroscope", 2, False, 0.001, "°/s"),
    0x55: _Obj("volume_storage", 4, False, 0.001, "L"),
    0x56: _Obj("conductivity", 2, False, 1, "µS/cm"),
    0x57: _Obj("temperature", 1, True, 1, "°C"),
    0x58: _Obj("temperature", 1, True, 0.35, "°C"),
    0x59: _Obj("count", 1, True, 1, None),
    0x5A: _Obj("count", 2, True, 1, None),
    0x5B: _Obj("count", 4, True, 1, None),
    0x5C: _Obj("power", 4, True, 0.01, "W"),
    0x5D: _Obj("current", 2, True, 0.001, "A"),
    0x5E: _Obj("direction", 2, False, 0.01, "°"),
    0x5F: _Obj("precipitation", 2, False, 0.1, "mm"),
    0x60: _Obj("channel", 1, False, 1, None),
    0x61: _Obj("rotational_speed", 2, False, 1, "rpm"),
    0x62: _Obj("speed", 4, True, 0.000001, "m/s"),
    0x63: _Obj("acceleration", 4, True, 0.000001, "m/s²"),
    0x64: _Obj("light_level", 1, False, 1, None),
    0x65: _Obj("settings_revision", 1, False, 1, None),
    0xF0: _Obj("device_type_id", 2, False, 1, None),
}
_BINARY: dict[int, str] = {
    0x0F: "generic_boolean", 0x10: "power_on", 0x11: "opening", 0x15: "battery_low",
    0x16: "battery_charging", 0x17: "carbon_monoxide", 0x18: "cold", 0x19: "connectivity",
    0x1A: "door", 0x1B: "garage_door", 0x1C: "gas_detected", 0x1D: "heat", 0x1E: "light",
    0x1F: "lock", 0x20: "moisture_detected", 0x21: "motion", 0x22: "moving", 0x23: "occupancy",
    0x24: "plug", 0x25: "presence", 0x26: "problem", 0x27: "running", 0x28: "safety",
    0x29: "smoke", 0x2A: "sound", 0x2B: "tamper", 0x2C: "vibration", 0x2D: "window",
}
# The "Events" table: event id -> event. Id 0x00 is "None" (no event for this button or
# dimmer: it only holds its place, so `3A003A01` is a press of the second button); any id
# not listed is not an event either.
_BUTTON_EVENTS = {0x01: "press", 0x02: "double_press", 0x03: "triple_press",
                  0x04: "long_press", 0x05: "long_double_press", 0x06: "long_triple_press",
                  0x80: "hold_press", 0x81: "hold_release"}
_DIMMER_EVENTS = {0x01: "rotate_left", 0x02: "rotate_right"}
# "Commands" (object 0x3B): opcode -> command; 0x05-0xFF are reserved.
_COMMANDS = {0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down"}
UUID_LE = b"\xd2\xfc"
SPEC_VERSION = "BTHome v2 as of 2026-04 (object ids up to 0x65, command 0x3B, 0xF0-0xF2)"
"""The edition of bthome.io/format this decoder implements (also in drivers/ble/README.md)."""
_MAC_INCLUDED = 0x02
"""Device info bit 1: legacy "MAC included" flag of early v2 firmware (see decode)."""
REFUSED_PLAINTEXT = ("plaintext advert refused: a bindkey is configured for this sensor, so "
                     "only its encrypted adverts are trusted (this one is unencrypted: "
                     "injected, replayed from an older firmware, or encryption was turned off "
                     "on the sensor)")


def _decrypt(info: int, body: bytes, mac: bytes, key: bytes) -> bytes | str:
    """Plaintext, or the reason it could not be had."""
    if len(body) < 9:
        return "encrypted payload too short"
    ciphertext, counter, mic = body[:-8], body[-8:-4], body[-4:]
    nonce = mac + UUID_LE + bytes([info]) + counter
    try:
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - only for bindkeys
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # noqa: PLC0415
    except ImportError:
        return "cannot decrypt: the 'cryptography' package is not installed"
    try:
        return AESCCM(key, tag_length=4).decrypt(nonce, ciphertext + mic, None)
    except InvalidTag:
        return "decryption failed: wrong bindkey or address, or a corrupted advert"
    except ValueError as exc:  # a key of the wrong length
        return f"cannot decrypt: {exc}"


def decode(data: bytes, *, address: str | None = None,
           bindkey: bytes | None = None) -> Decoded | None:
    """Decode BTHome v2 service data (the bytes after the UUID); None if not BTHome v2.

    With a `bindkey` only encrypted adverts are accepted: a plaintext one comes back with
    `refused="plaintext"` and no values, because anyone in radio range can send it.

    Bit 1 of the device information byte is "reserved" in the current specification; early
    v2 firmware used it as "MAC included" (the sender's MAC, reversed, before the objects),
    and Home Assistant's reference decoder still honours it. So do we: ignoring it would
    read the six MAC bytes as measurement objects. The embedded MAC is reported as
    `info["mac"]` and, as in the reference, used for the decryption nonce.
    """
    if not data:
        return None
    info = data[0]
    if (info >> 5) & 0x07 != 2:
        return None
    encrypted = bool(info & 0x01)
    if bindkey is not None and not encrypted:
        return Decoded("bthome", error=REFUSED_PLAINTEXT, refused="plaintext")
    payload = bytes(data[1:])
    info_fields: dict[str, Scalar] = {"encrypted": encrypted,
                                      "trigger_based": bool(info & 0x04)}
    if info & _MAC_INCLUDED:
        if len(payload) < 6:
            return Decoded("bthome", error="truncated embedded MAC address")
        embedded = payload[5::-1]
        payload = payload[6:]
        info_fields["mac"] = ":".join(f"{b:02X}" for b in embedded)
        address = str(info_fields["mac"])
    counter: int | None = None
    if encrypted:
        if bindkey is None:
            return Decoded("bthome", error="encrypted advert: configure the device's bindkey")
        mac = mac_bytes(address)
        if mac is None:
            return Decoded("bthome", error="encrypted advert: the sender's MAC address is "
                                           "needed to decrypt")
        plain = _decrypt(info, payload, mac, bindkey)
        if isinstance(plain, str):
            return Decoded("bthome", error=plain)
        counter = int.from_bytes(payload[-8:-4], "little")
        payload = plain
    values, packet_id, error = _objects(payload)
    if counter is not None:
        info_fields["counter"] = counter
    if packet_id is None:
        packet_id = counter
    return Decoded("bthome", tuple(values), error, packet_id, info_fields)


class _Names:
    """The spec's rule for repeats: temperature, temperature_2, temperature_3 ...

    Every object takes its place in the numbering, also one that yields no value (a button
    with event "None", an unknown event code), so a sensor's second button is `button_2`
    in every advert.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next(self, name: str) -> str:
        n = self._seen.get(name, 0) + 1
        self._seen[name] = n
        return name if n == 1 else f"{name}_{n}"


def _objects(p: bytes) -> tuple[list[Value], int | None, str | None]:
    """Measurements in order; stops at an unknown (its length is not known) or cut object."""
    values: list[Value] = []
    names = _Names()
    packet_id: int | None = None
    i = 0

    def add(name: str, value: Scalar, unit: str | None = None, event: bool = False) -> None:
        values.append(Value(names.next(name), value, unit, event))

    while i < len(p):
        oid = p[i]
        i += 1
        if oid == 0x00:
            if i + 1 > len(p):
                return values, packet_id, "truncated packet id"
            packet_id = p[i]
            i += 1
        elif (obj := _SENSORS.get(oid)) is not None:
            if i + obj.size > len(p):
                return values, packet_id, f"truncated object 0x{oid:02x} ({obj.name})"
            raw = int.from_bytes(p[i:i + obj.size], "little", signed=obj.signed)
            i += obj.size
            value: float | int = raw if obj.factor == 1 else round(raw * obj.factor, 6)
            add(obj.name, value, obj.unit)
        elif (name := _BINARY.get(oid)) is not None:
            if i + 1 > len(p):
                return values, packet_id, f"truncated object 0x{oid:02x} ({name})"
            add(name, p[i] != 0)
            i += 1
        elif oid in (0x53, 0x54):  # text / raw: a length byte, then that many bytes
            if i + 1 > len(p) or i + 1 + p[i] > len(p):
                return values, packet_id, f"truncated object 0x{oid:02x}"
            blob = p[i + 1:i + 1 + p[i]]
            i += 1 + p[i]
            if oid == 0x54:
                add("raw", blob.hex())
                continue
            try:
                add("text", blob.decode("utf-8"))
            except UnicodeDecodeError:  # the spec says UTF-8; do not invent characters
                names.next("text")
        elif oid == 0x3A:
            if i + 1 > len(p):
                return values, packet_id, "truncated button event"
            slot = names.next("button")
            if (event := _BUTTON_EVENTS.get(p[i])) is not None:
                values.append(Value(slot, event, None, True))
            i += 1
        elif oid == 0x3B:  # command: length byte (low 5 bits: argument bytes), opcode, args
            if i + 2 > len(p) or i + 2 + (p[i] & 0x1F) > len(p):
                return values, packet_id, "truncated command"
            size = p[i] & 0x1F
            opcode, args = p[i + 1], p[i + 2:i + 2 + size]
            i += 2 + size
            slot = names.next("command")
            if (command := _COMMANDS.get(opcode)) is not None:
                values.append(Value(slot, command, None, True))
                if args:
                    values.append(Value(f"{slot}_args", args.hex(), None, True))
        elif oid == 0x3C:
            if i + 2 > len(p):
                return values, packet_id, "truncated dimmer event"
            slot = names.next("dimmer")
            if (kind := _DIMMER_EVENTS.get(p[i])) is not None:
                steps = p[i + 1] * (-1 if kind == "rotate_left" else 1)
                values.append(Value(slot, steps, "steps", True))
            i += 2
        elif oid in (0xF1, 0xF2):
            size = 4 if oid == 0xF1 else 3
            if i + size > len(p):
                return values, packet_id, "truncated firmware version"
            add("firmware_version", ".".join(str(b) for b in reversed(p[i:i + size])))
            i += size
        else:
            # Objects have no length field: the size of an id this table does not know
            # cannot be guessed, so nothing after it can be decoded (the spec says to stop).
            rest = len(p) - i
            return values, packet_id, (
                f"unknown object id 0x{oid:02x} (newer than the BTHome v2 table this decoder "
                f"implements): its length is not known, so the {rest} byte(s) after it were "
                "not decoded")
    return values, packet_id, None

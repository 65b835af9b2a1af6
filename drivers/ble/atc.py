"""LYWSD03MMC custom firmware adverts on service data UUID 0x181A: atc1441 and pvvx formats.

atc1441 (13 bytes, big endian): MAC[6], temperature int16 x0.1 °C, humidity uint8 %,
battery uint8 %, battery uint16 mV, frame counter uint8.
pvvx custom (15 bytes, little endian): MAC[6] reversed, temperature int16 x0.01 °C,
humidity uint16 x0.01 %, battery uint16 mV, battery uint8 %, counter uint8, flags uint8.
"""

from __future__ import annotations

from drivers.ble.advert import Decoded, Value


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def decode(data: bytes) -> Decoded | None:
    """Decode 0x181A service data (the bytes after the UUID); None if empty."""
    if len(data) == 13:
        return Decoded("atc", (
            Value("temperature", round(int.from_bytes(data[6:8], "big", signed=True) * 0.1, 1),
                  "°C"),
            Value("humidity", data[8], "%"),
            Value("battery", data[9], "%"),
            Value("battery_voltage", round(int.from_bytes(data[10:12], "big") / 1000, 3), "V"),
        ), None, data[12], {"mac": _mac(data[0:6])})
    if len(data) == 15:
        flags = data[14]
        return Decoded("pvvx", (
            Value("temperature",
                  round(int.from_bytes(data[6:8], "little", signed=True) * 0.01, 2), "°C"),
            Value("humidity", round(int.from_bytes(data[8:10], "little") * 0.01, 2), "%"),
            Value("battery_voltage", round(int.from_bytes(data[10:12], "little") / 1000, 3),
                  "V"),
            Value("battery", data[12], "%"),
            Value("reed_switch", bool(flags & 0x01), None),
        ), None, data[13], {"mac": _mac(data[5::-1]), "flags": flags})
    if not data:
        return None
    return Decoded("atc", error=f"0x181A service data of {len(data)} bytes is neither atc1441 "
                                "(13) nor pvvx (15); encrypted pvvx adverts are not supported")

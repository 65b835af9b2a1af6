"""RuuviTag manufacturer data (company 0x0499), data format 5 (RAWv2), per docs.ruuvi.com."""

from __future__ import annotations

from drivers.ble.advert import Decoded, Scalar, Value

_NA_I16 = -32768
_NA_U16 = 0xFFFF


def decode(data: bytes) -> Decoded | None:
    """Decode Ruuvi manufacturer data (the bytes after the company id); None if empty."""
    if not data:
        return None
    if data[0] != 5:
        return Decoded("ruuvi", error=f"unsupported Ruuvi data format {data[0]}; "
                                      "only format 5 (RAWv2) is decoded")
    if len(data) < 24:
        return Decoded("ruuvi", error=f"RAWv2 payload is {len(data)} bytes, expected 24")

    def i16(at: int) -> int:
        return int.from_bytes(data[at:at + 2], "big", signed=True)

    def u16(at: int) -> int:
        return int.from_bytes(data[at:at + 2], "big")

    # "not available" is the largest unsigned / smallest signed value of each field
    values: list[Value] = []
    if (t := i16(1)) != _NA_I16:
        values.append(Value("temperature", round(t * 0.005, 3), "°C"))
    if (h := u16(3)) != _NA_U16:
        values.append(Value("humidity", round(h * 0.0025, 4), "%"))
    if (p := u16(5)) != _NA_U16:
        values.append(Value("pressure", round((p + 50_000) / 100, 2), "hPa"))
    for axis, at in (("x", 7), ("y", 9), ("z", 11)):
        if (a := i16(at)) != _NA_I16:
            values.append(Value(f"acceleration_{axis}", round(a / 1000, 3), "g"))
    power = u16(13)
    if (mv := power >> 5) != 0x7FF:
        values.append(Value("battery_voltage", round((mv + 1600) / 1000, 3), "V"))
    if (tx := power & 0x1F) != 0x1F:
        values.append(Value("tx_power", tx * 2 - 40, "dBm"))
    if (movement := data[15]) != 0xFF:
        values.append(Value("movement_counter", movement, None))
    seq = u16(16)
    if seq != _NA_U16:
        values.append(Value("measurement_sequence", seq, None))
    info: dict[str, Scalar] = {}
    if (mac := data[18:24]) != b"\xff" * 6:
        info["mac"] = ":".join(f"{b:02X}" for b in mac)
    return Decoded("ruuvi", tuple(values), None, None if seq == _NA_U16 else seq, info)

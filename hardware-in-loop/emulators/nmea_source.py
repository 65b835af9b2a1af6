"""A GNSS receiver on a pseudo-terminal: GGA and RMC sentences with correct checksums.

Script:  python hardware-in-loop/emulators/nmea_source.py --link /tmp/by-id/usb-gnss
Tests:   `NmeaSource` (asyncio), `sentence()`, `gga()`, `rmc()` to build lines by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from datetime import UTC, datetime

try:
    from emulators.line_sensor import LineSensor, PtyPort
except ImportError:  # run as a script from this directory
    from line_sensor import LineSensor, PtyPort  # type: ignore[no-redef,import-not-found]


def checksum(body: str) -> int:
    """XOR of every character between `$` and `*`."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return value


def sentence(body: str, *, bad_checksum: bool = False) -> bytes:
    """`$BODY*HH\\r\\n`; `bad_checksum` flips the checksum."""
    cs = checksum(body) ^ (0xFF if bad_checksum else 0)
    return f"${body}*{cs:02X}\r\n".encode("ascii")


def _coord(value: float, degree_digits: int, positive: str, negative: str) -> tuple[str, str]:
    deg = int(abs(value))
    minutes = (abs(value) - deg) * 60.0
    return f"{deg:0{degree_digits}d}{minutes:07.4f}", positive if value >= 0 else negative


def gga(lat: float, lon: float, alt: float, *, sats: int = 8, hdop: float = 0.9,
        quality: int = 1, when: datetime | None = None, talker: str = "GP") -> str:
    """A GGA body (no `$`, no checksum)."""
    t = when or datetime.now(tz=UTC)
    la, ns = _coord(lat, 2, "N", "S")
    lo, ew = _coord(lon, 3, "E", "W")
    return (f"{talker}GGA,{t:%H%M%S}.00,{la},{ns},{lo},{ew},{quality},{sats:02d},{hdop:.1f},"
            f"{alt:.1f},M,46.9,M,,")


def rmc(lat: float, lon: float, speed_kn: float, course: float, *, valid: bool = True,
        when: datetime | None = None, talker: str = "GP") -> str:
    """An RMC body (no `$`, no checksum)."""
    t = when or datetime.now(tz=UTC)
    la, ns = _coord(lat, 2, "N", "S")
    lo, ew = _coord(lon, 3, "E", "W")
    return (f"{talker}RMC,{t:%H%M%S}.00,{'A' if valid else 'V'},{la},{ns},{lo},{ew},"
            f"{speed_kn:.1f},{course:.1f},{t:%d%m%y},,,A")


class NmeaSource(LineSensor):
    """Pushes GGA then RMC every `period` seconds from `lat`, `lon`, `alt`, speed, course."""

    def __init__(self, port: PtyPort, *, lat: float = 29.5630, lon: float = 106.5516,
                 alt: float = 245.3, speed_kn: float = 12.5, course: float = 84.4,
                 period: float | None = 0.1) -> None:
        super().__init__(port, period=period)
        self.lat, self.lon, self.alt = lat, lon, alt
        self.speed_kn, self.course = speed_kn, course

    def line(self) -> bytes:
        """One fix: a GGA and an RMC sentence."""
        return (sentence(gga(self.lat, self.lon, self.alt))
                + sentence(rmc(self.lat, self.lon, self.speed_kn, self.course)))


async def _main(args: argparse.Namespace) -> None:
    port = PtyPort(args.link)
    source = NmeaSource(port, lat=args.lat, lon=args.lon, period=args.period)
    await source.start()
    print(json.dumps({"port": port.path, "pty": port.slave_name}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await source.stop()
        port.close()


def main() -> None:
    """Run the emulator until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--link", help="symlink to create, e.g. /tmp/by-id/usb-gnss")
    p.add_argument("--lat", type=float, default=29.5630)
    p.add_argument("--lon", type=float, default=106.5516)
    p.add_argument("--period", type=float, default=1.0)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(p.parse_args()))


if __name__ == "__main__":
    main()

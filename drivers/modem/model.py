"""What the modem driver reports, whichever source (AT port or ModemManager) it came from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.model import Reading

Source = Literal["at", "modemmanager"]

# 3GPP TS 27.007 <stat> of +CREG/+CEREG/+C5GREG, named as ModemManager names
# MMModem3gppRegistrationState, so both sources speak one vocabulary.
REGISTRATION_STATES: dict[int, str] = {
    0: "idle", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming",
    6: "home-sms-only", 7: "roaming-sms-only", 8: "emergency-only",
    9: "home-csfb-not-preferred", 10: "roaming-csfb-not-preferred", 11: "attached-rlos",
}
REGISTERED_STATES = frozenset({"home", "roaming", "home-sms-only", "roaming-sms-only",
                               "home-csfb-not-preferred", "roaming-csfb-not-preferred"})

LTE, NSA, SA = "LTE", "NR5G-NSA", "NR5G-SA"


@dataclass(frozen=True, slots=True)
class ModemStatus:
    """One look at the modem's link; `None` means the modem did not say."""

    source: Source
    model: str | None = None
    state: str | None = None
    """AT: the serving-cell state (SEARCH, LIMSRV, NOCONN, CONNECT); ModemManager: its state."""
    technology: str | None = None
    """LTE, NR5G-NSA, NR5G-SA, WCDMA, GSM, LTE-M, NB-IoT."""
    operator: str | None = None
    operator_code: str | None = None
    """MCC and MNC, such as 46001."""
    registration: str | None = None
    """home, roaming, searching, denied, idle, unknown, ... (ModemManager's words)."""
    registered: bool | None = None
    rsrp: float | None = None
    """Primary serving cell: the LTE cell (also the NSA anchor) or, in SA, the NR cell."""
    rsrq: float | None = None
    sinr: float | None = None
    rssi: float | None = None
    nr_rsrp: float | None = None
    """The NR cell, in NSA and SA."""
    nr_rsrq: float | None = None
    nr_sinr: float | None = None
    cell_id: str | None = None
    """Serving cell identity in hex as the modem prints it (28-bit LTE, 36-bit NR)."""
    band: str | None = None
    """B3, n78, or B3+n78 in NSA."""
    temperature: float | None = None
    """Hottest module sensor, °C."""
    signal_quality: int | None = None
    """ModemManager's 0-100 % figure."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for the CLI)."""
        return asdict(self)

    def readings(self, device: str, ts: int) -> list[Reading]:
        """The present values as readings: numbers with units, text as string values."""
        out: list[Reading] = []
        for metric, unit in _READINGS:
            value = getattr(self, metric)
            if value is None:
                continue
            if isinstance(value, bool):
                value = int(value)
            out.append(Reading(device, metric, value, ts, unit))
        return out


_READINGS: tuple[tuple[str, str | None], ...] = (
    ("state", None), ("technology", None), ("operator", None), ("operator_code", None),
    ("registration", None), ("registered", None),
    ("rsrp", "dBm"), ("rsrq", "dB"), ("sinr", "dB"), ("rssi", "dBm"),
    ("nr_rsrp", "dBm"), ("nr_rsrq", "dB"), ("nr_sinr", "dB"),
    ("cell_id", None), ("band", None), ("temperature", "°C"), ("signal_quality", "%"),
)

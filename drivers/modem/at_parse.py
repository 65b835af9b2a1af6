"""Pure parsers for Quectel AT responses: response lines in, dataclasses out.

Each `parse_*` takes the lines the modem printed for one command (prefixes included, echo and
the final result code left out), skips what does not belong (unsolicited lines, garbage),
tolerates truncation and returns `None` or fields set to `None`; none of them raises.

Layouts follow Quectel's manuals (RG50xQ&RM5xxQ Series Network Application Note, EC25&EC21 AT
Commands Manual). `AT+QENG="servingcell"` answers differently per radio:

    LTE:  +QENG: "servingcell",<state>,"LTE",<is_tdd>,<MCC>,<MNC>,<cellID>,<PCID>,<earfcn>,
                 <freq_band_ind>,<UL_bw>,<DL_bw>,<TAC>,<RSRP>,<RSRQ>,<RSSI>,<SINR>,<CQI>,
                 <tx_power>,<srxlev>
    NSA:  +QENG: "servingcell",<state>
          +QENG: "LTE",<is_tdd>,<MCC>,...same as above from <is_tdd> on...
          +QENG: "NR5G-NSA",<MCC>,<MNC>,<PCID>,<RSRP>,<SINR>,<RSRQ>,<ARFCN>,<band>,<NR_DL_bw>,<scs>
    SA:   +QENG: "servingcell",<state>,"NR5G-SA",<duplex>,<MCC>,<MNC>,<cellID>,<PCID>,<TAC>,
                 <ARFCN>,<band>,<NR_DL_bw>,<RSRP>,<RSRQ>,<SINR>,<scs>,<srxlev>

Note SINR before RSRQ on the NSA line, and TAC before ARFCN on the SA line. `-` (and the
firmware's -32768) mark a value that is invalid in the current condition.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from drivers.modem.model import (
    LTE,
    NSA,
    REGISTERED_STATES,
    REGISTRATION_STATES,
    SA,
    ModemStatus,
)

LteSinr = Literal["auto", "db", "2x-20", "x/5-20"]
"""How a module prints LTE SINR in +QENG: dB, `2x-20` (RM5xx/RG5xx), `x/5-20` (EC2x/EG/BG9x)."""

_INVALID = frozenset({"", "-", "--", "-32768", "32767", "-32767"})
_INT = re.compile(r"^[+-]?\d{1,10}$")
_NUM = re.compile(r"^[+-]?\d{1,10}(?:\.\d{1,6})?$")
_HEX = re.compile(r"^[0-9A-Fa-f]{1,12}$")
_DIGITS = re.compile(r"^\d{1,4}$")
_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")


class Field(NamedTuple):
    """One comma-separated field of a response line."""

    text: str
    quoted: bool


def split_fields(payload: str) -> list[Field]:
    """Split `a,"b,c",d` into fields, honouring double quotes; never raises."""
    fields: list[Field] = []
    cur: list[str] = []
    quoted = in_quotes = False
    for ch in payload:
        if ch == '"':
            in_quotes = not in_quotes
            quoted = True
        elif ch == "," and not in_quotes:
            fields.append(Field("".join(cur).strip(), quoted))
            cur, quoted = [], False
        else:
            cur.append(ch)
    fields.append(Field("".join(cur).strip(), quoted))
    return fields


def payload(line: str, prefix: str) -> str | None:
    """The text after `prefix` (`+CSQ:`), or None when the line is not that response."""
    text = line.strip()
    if text[: len(prefix)].upper() != prefix.upper():
        return None
    return text[len(prefix):].strip()


def _int(text: str) -> int | None:
    return int(text) if text not in _INVALID and _INT.match(text) else None


def _num(text: str) -> int | float | None:
    if text in _INVALID or not _NUM.match(text):
        return None
    return float(text) if "." in text else int(text)


def _hex(text: str) -> str | None:
    return text.upper() if _HEX.match(text) and text not in _INVALID else None


def _digits(text: str) -> str | None:
    """MCC/MNC kept as printed: 01 is not 1."""
    return text if _DIGITS.match(text) else None


def _word(text: str) -> str | None:
    return text if _WORD.match(text) else None


def _text(text: str) -> str | None:
    clean = "".join(ch for ch in text if ch.isprintable()).strip()
    return clean if clean and clean not in _INVALID else None


def _at(fields: Sequence[Field], i: int) -> str:
    return fields[i].text if i < len(fields) else ""


def _lines_with(lines: Iterable[str], prefix: str) -> Iterable[list[Field]]:
    for line in lines:
        p = payload(line, prefix)
        if p is not None:
            yield split_fields(p)


# --- AT+CSQ ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Csq:
    """`+CSQ: <rssi>,<ber>`, the RSSI converted to dBm."""

    rssi: int | None
    ber: int | None


def csq_to_dbm(n: int) -> int | None:
    """27.007 <rssi> index to dBm (0 -> -113, 31 -> -51; 100..191 TD-SCDMA); 99/199 unknown."""
    if 0 <= n <= 31:
        return -113 + 2 * n
    if 100 <= n <= 191:
        return n - 216
    return None


def parse_csq(lines: Iterable[str]) -> Csq | None:
    """`AT+CSQ`."""
    for f in _lines_with(lines, "+CSQ:"):
        n = _int(f[0].text)
        if n is None:
            continue
        return Csq(csq_to_dbm(n), _int(_at(f, 1)))
    return None


# --- AT+COPS? ------------------------------------------------------------------------------

# 27.007 <AcT>; 8 is LTE Cat-M on Quectel LPWA modules (BG96 and kin).
ACT_TECHNOLOGY: dict[int, str] = {
    0: "GSM", 1: "GSM", 2: "WCDMA", 3: "GSM", 4: "WCDMA", 5: "WCDMA", 6: "WCDMA",
    7: LTE, 8: "LTE-M", 9: "NB-IoT", 10: LTE, 11: SA, 12: SA, 13: NSA,
}


@dataclass(frozen=True, slots=True)
class Cops:
    """`+COPS: <mode>[,<format>,<oper>[,<AcT>]]`."""

    mode: int | None
    format: int | None
    name: str | None
    act: int | None

    @property
    def technology(self) -> str | None:
        """Access technology named from <AcT>."""
        return ACT_TECHNOLOGY.get(self.act) if self.act is not None else None


def parse_cops(lines: Iterable[str]) -> Cops | None:
    """`AT+COPS?`."""
    for f in _lines_with(lines, "+COPS:"):
        mode = _int(f[0].text)
        if mode is None or f[0].quoted:
            continue
        return Cops(mode, _int(_at(f, 1)), _text(_at(f, 2)), _int(_at(f, 3)))
    return None


# --- AT+CREG? / AT+CEREG? / AT+C5GREG? ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Registration:
    """The read form `+CEREG: <n>,<stat>[,<tac>,<ci>[,<AcT>]]` of one domain."""

    domain: str
    """CREG (circuit switched), CEREG (EPS, LTE), C5GREG (5GS, SA core)."""
    stat: int
    area: str | None = None
    cell_id: str | None = None
    act: int | None = None

    @property
    def state(self) -> str:
        """ModemManager's name for the state (home, roaming, searching, ...)."""
        return REGISTRATION_STATES.get(self.stat, "unknown")

    @property
    def registered(self) -> bool:
        """Registered on a network (home, roaming, SMS-only, CSFB variants)."""
        return self.state in REGISTERED_STATES


def parse_registration(lines: Iterable[str], domain: str) -> Registration | None:
    """`AT+CREG?`, `AT+CEREG?` or `AT+C5GREG?` (domain without `+`).

    The read form starts with two bare integers `<n>,<stat>`; the unsolicited forms
    (`+CREG: 1`, `+CREG: 1,"D509","80D413D",7`) do not, so one interleaved is skipped.
    """
    for f in _lines_with(lines, f"+{domain}:"):
        if len(f) < 2 or f[0].quoted or f[1].quoted:
            continue
        n, stat = _int(f[0].text), _int(f[1].text)
        if n is None or stat is None or not 0 <= n <= 5 or not 0 <= stat <= 11:
            continue
        return Registration(domain, stat, _hex(_at(f, 2)), _hex(_at(f, 3)), _int(_at(f, 4)))
    return None


# --- AT+QENG="servingcell" -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LteCell:
    """The LTE serving cell (LTE mode, or the anchor in NSA). `sinr` as printed (raw)."""

    duplex: str | None = None
    mcc: str | None = None
    mnc: str | None = None
    cell_id: str | None = None
    pci: int | None = None
    earfcn: int | None = None
    band: int | None = None
    ul_bandwidth: int | None = None
    dl_bandwidth: int | None = None
    tac: str | None = None
    rsrp: int | float | None = None
    rsrq: int | float | None = None
    rssi: int | float | None = None
    sinr: int | float | None = None
    cqi: int | None = None
    tx_power: int | None = None
    srxlev: int | None = None


@dataclass(frozen=True, slots=True)
class NrCell:
    """The NR cell: the SA serving cell, or the NSA secondary (no cell id, TAC, duplex)."""

    mcc: str | None = None
    mnc: str | None = None
    pci: int | None = None
    rsrp: int | float | None = None
    rsrq: int | float | None = None
    sinr: int | float | None = None
    arfcn: int | None = None
    band: int | None = None
    dl_bandwidth: int | None = None
    scs: int | None = None
    duplex: str | None = None
    cell_id: str | None = None
    tac: str | None = None
    srxlev: int | None = None


@dataclass(frozen=True, slots=True)
class ServingCell:
    """`AT+QENG="servingcell"`: UE state and the LTE and/or NR cell."""

    state: str | None = None
    """SEARCH, LIMSRV, NOCONN or CONNECT."""
    rat: str | None = None
    """The radio named on the line: LTE, NR5G-SA, WCDMA, GSM, CAT-M, CAT-NB."""
    lte: LteCell | None = None
    nr: NrCell | None = None
    other_cell_id: str | None = None
    """Cell id of a WCDMA/GSM serving cell."""
    other_mcc: str | None = None
    other_mnc: str | None = None

    @property
    def technology(self) -> str | None:
        """LTE, NR5G-NSA, NR5G-SA, LTE-M, NB-IoT, WCDMA, GSM or None (searching)."""
        if self.rat == SA:
            return SA
        if self.lte is not None and self.nr is not None:
            return NSA
        if self.rat in ("CAT-M", "EMTC"):
            return "LTE-M"
        if self.rat in ("CAT-NB", "NBIOT"):
            return "NB-IoT"
        if self.lte is not None:
            return LTE
        if self.rat in ("WCDMA", "GSM"):
            return self.rat
        return None

    @property
    def mcc_mnc(self) -> str | None:
        """Operator code (MCC and MNC) of the serving cell."""
        for mcc, mnc in ((c.mcc, c.mnc) for c in (self.lte, self.nr) if c is not None):
            if mcc and mnc:
                return mcc + mnc
        if self.other_mcc and self.other_mnc:
            return self.other_mcc + self.other_mnc
        return None


def _lte(v: Sequence[Field]) -> LteCell:
    """Fields from <is_tdd> on."""
    t = [x.text for x in v] + [""] * max(0, 17 - len(v))
    duplex = t[0].upper() if t[0].upper() in ("FDD", "TDD") else None
    return LteCell(duplex, _digits(t[1]), _digits(t[2]), _hex(t[3]), _int(t[4]), _int(t[5]),
                   _int(t[6]), _int(t[7]), _int(t[8]), _hex(t[9]), _num(t[10]), _num(t[11]),
                   _num(t[12]), _num(t[13]), _int(t[14]), _int(t[15]), _int(t[16]))


def _nsa(v: Sequence[Field]) -> NrCell:
    """Fields after "NR5G-NSA": MCC, MNC, PCID, RSRP, SINR, RSRQ, ARFCN, band, bw, scs."""
    t = [x.text for x in v] + [""] * max(0, 10 - len(v))
    return NrCell(mcc=_digits(t[0]), mnc=_digits(t[1]), pci=_int(t[2]), rsrp=_num(t[3]),
                  sinr=_num(t[4]), rsrq=_num(t[5]), arfcn=_int(t[6]), band=_int(t[7]),
                  dl_bandwidth=_int(t[8]), scs=_int(t[9]))


def _sa(v: Sequence[Field]) -> NrCell:
    """Fields after "NR5G-SA": duplex, MCC, MNC, cellID, PCID, TAC, ARFCN, band, bw, RSRP,
    RSRQ, SINR, scs, srxlev."""
    t = [x.text for x in v] + [""] * max(0, 14 - len(v))
    duplex = t[0].upper() if t[0].upper() in ("FDD", "TDD") else None
    return NrCell(duplex=duplex, mcc=_digits(t[1]), mnc=_digits(t[2]), cell_id=_hex(t[3]),
                  pci=_int(t[4]), tac=_hex(t[5]), arfcn=_int(t[6]), band=_int(t[7]),
                  dl_bandwidth=_int(t[8]), rsrp=_num(t[9]), rsrq=_num(t[10]), sinr=_num(t[11]),
                  scs=_int(t[12]), srxlev=_int(t[13]))


def parse_qeng(lines: Iterable[str]) -> ServingCell | None:
    """`AT+QENG="servingcell"` in LTE, NSA (several lines), SA, WCDMA and search states."""
    state: str | None = None
    rat: str | None = None
    lte: LteCell | None = None
    nr: NrCell | None = None
    other: tuple[str | None, str | None, str | None] = (None, None, None)
    seen = False
    for line in _lines_with(lines, "+QENG:"):
        f = line
        tag = f[0].text.upper()
        if tag == "SERVINGCELL":
            seen = True
            word = _word(_at(f, 1))
            state = word.upper() if word else None
            f = f[2:]
            if not f:
                continue
            tag = f[0].text.upper()
        elif tag not in ("LTE", "NR5G-NSA", "NR5G-SA", "WCDMA", "GSM", "CAT-M", "CAT-NB",
                         "EMTC", "NBIOT"):
            continue  # neighbour cells or noise
        seen = True
        values = f[1:]
        if tag in ("LTE", "CAT-M", "CAT-NB", "EMTC", "NBIOT"):
            lte = _lte(values)
            rat = rat or tag
        elif tag == "NR5G-NSA":
            nr = _nsa(values)
        elif tag == "NR5G-SA":
            nr, rat = _sa(values), SA
        elif tag in ("WCDMA", "GSM"):  # <MCC>,<MNC>,<LAC>,<cellID>,...
            rat = tag
            other = (_hex(_at(values, 3)), _digits(_at(values, 0)), _digits(_at(values, 1)))
    if not seen:
        return None
    return ServingCell(state, rat, lte, nr, *other)


# --- AT+QTEMP --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Temperatures:
    """`AT+QTEMP`: named sensors (RM5xx: `+QTEMP: "cpuss-0-usr","43"` per line) or the
    EC2x form `+QTEMP: <pmic>,<xo>,<pa>`."""

    sensors: tuple[tuple[str, float], ...]

    @property
    def hottest(self) -> float | None:
        """The module temperature: the hottest sensor that reads a plausible value.

        Absent sensors print -273 (RM5xx) or 255 (EC200), so -40..125 °C is kept.
        """
        plausible = [v for _n, v in self.sensors if -40.0 <= v <= 125.0]
        return max(plausible) if plausible else None


_EC2X_SENSORS = ("pmic", "xo", "pa")


def parse_qtemp(lines: Iterable[str]) -> Temperatures | None:
    """`AT+QTEMP` in either layout."""
    sensors: list[tuple[str, float]] = []
    pos = 0
    for f in _lines_with(lines, "+QTEMP:"):
        i = 0
        while i < len(f):
            name: str | None = None
            if f[i].quoted and _num(f[i].text) is None and i + 1 < len(f):
                name, value = _text(f[i].text), _num(f[i + 1].text)
                i += 2
            else:
                value = _num(f[i].text)
                i += 1
            if value is None:
                continue
            if name is None:
                name = _EC2X_SENSORS[pos] if pos < len(_EC2X_SENSORS) else f"sensor{pos}"
                pos += 1
            sensors.append((name, float(value)))
    return Temperatures(tuple(sensors)) if sensors else None


# --- AT+CGMM --------------------------------------------------------------------------------

def parse_model(lines: Iterable[str]) -> str | None:
    """`AT+CGMM`: the first printable line, such as RM500Q-GL."""
    for line in lines:
        text = _text(line)
        if text and not text.startswith("+"):
            return text[:64]
    return None


_SINR_2X = re.compile(r"^(RM5|RG5)")
_SINR_FIFTH = re.compile(r"^(EC2[015]|EG2[15]|EG0[6-9]|EP0[6-9]|EM0[5-7]|EG1[28]|EM1[2-8]|"
                         r"EG9[15]|BG9[56]|BG77|BG600)(?![0-9])")


def lte_sinr_for_model(model: str | None) -> LteSinr:
    """The LTE SINR format a module family prints, by its model name (CGMM)."""
    m = (model or "").strip().upper()
    if _SINR_2X.match(m):
        return "2x-20"  # RG50xQ&RM5xxQ Network Application Note: Y = 1/5 * X * 10 - 20
    if _SINR_FIFTH.match(m):
        return "x/5-20"  # Qualcomm MDM9x07 family: 1/5 dB steps, 0..250 -> -20..+30 dB
    return "db"


def lte_sinr_db(raw: float | None, scale: LteSinr, model: str | None = None) -> float | None:
    """LTE SINR in dB from the raw +QENG value."""
    if raw is None:
        return None
    if scale == "auto":
        scale = lte_sinr_for_model(model)
    if scale == "2x-20":
        return raw * 2 - 20
    if scale == "x/5-20":
        return round(raw / 5 - 20, 1)
    return raw


# --- all together -----------------------------------------------------------------------------

def pick_registration(regs: Sequence[Registration]) -> Registration | None:
    """The most telling domain: the first registered one (5GS, EPS, CS), else the first
    with news (searching, denied), else the first."""
    order = {"C5GREG": 0, "CEREG": 1, "CREG": 2}
    ranked = sorted(regs, key=lambda r: order.get(r.domain, 3))
    for r in ranked:
        if r.registered:
            return r
    for r in ranked:
        if r.state not in ("idle", "unknown"):
            return r
    return ranked[0] if ranked else None


def _band(lte: LteCell | None, nr: NrCell | None, sa: bool) -> str | None:
    parts = []
    if lte is not None and lte.band is not None and not sa:
        parts.append(f"B{lte.band}")
    if nr is not None and nr.band is not None:
        parts.append(f"n{nr.band}")
    return "+".join(parts) or None


def build_status(*, model: str | None = None, csq: Csq | None = None,
                 cell: ServingCell | None = None, cops: Cops | None = None,
                 registrations: Sequence[Registration] = (),
                 temperatures: Temperatures | None = None,
                 lte_sinr: LteSinr = "auto") -> ModemStatus:
    """One `ModemStatus` from whatever parsed; absent parts leave their values `None`."""
    technology = (cell.technology if cell else None) or (cops.technology if cops else None)
    sa = technology == SA
    lte = cell.lte if cell else None
    nr = cell.nr if cell else None
    primary_rsrp = primary_rsrq = primary_sinr = rssi = None
    cell_id = None
    if sa and nr is not None:
        primary_rsrp, primary_rsrq, primary_sinr, cell_id = nr.rsrp, nr.rsrq, nr.sinr, nr.cell_id
    elif lte is not None:
        primary_rsrp, primary_rsrq, rssi, cell_id = lte.rsrp, lte.rsrq, lte.rssi, lte.cell_id
        primary_sinr = lte_sinr_db(lte.sinr, lte_sinr, model)
    elif cell is not None:
        cell_id = cell.other_cell_id
    if rssi is None and csq is not None:
        rssi = csq.rssi
    reg = pick_registration(registrations)
    operator_code = cell.mcc_mnc if cell else None
    operator = cops.name if cops else None
    if cops is not None and cops.format == 2 and operator and operator.isdigit():
        operator_code = operator_code or operator
    return ModemStatus(
        source="at", model=model,
        state=cell.state if cell else None,
        technology=technology, operator=operator, operator_code=operator_code,
        registration=reg.state if reg else None,
        registered=any(r.registered for r in registrations) if registrations else None,
        rsrp=primary_rsrp, rsrq=primary_rsrq, sinr=primary_sinr, rssi=rssi,
        nr_rsrp=nr.rsrp if nr else None, nr_rsrq=nr.rsrq if nr else None,
        nr_sinr=nr.sinr if nr else None,
        cell_id=cell_id, band=_band(lte, nr, sa),
        temperature=temperatures.hottest if temperatures else None,
    )

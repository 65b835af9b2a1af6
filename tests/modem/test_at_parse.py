"""AT response parsers on real Quectel response formats, exact values; and fuzzed input.

Response lines are the examples of Quectel's RG50xQ&RM5xxQ Series Network Application Note
(AT+QENG LTE / EN-DC / SA) and shapes published from real modules (EP06 LTE line without
CQI/tx_power, RM520N SA line with a space after the duplex mode, EC25 AT+QTEMP).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modem import at_parse as ap
from drivers.modem.at import AtEngine, _LineProtocol

LTE = [('+QENG: "servingcell","NOCONN","LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,'
       "-100,-12,-68,11,0,-32768,27")]
NSA = ['+QENG: "servingcell","NOCONN"',
       '+QENG: "LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,-99,-12,-67,11,9,230,-',
       '+QENG:"NR5G-NSA",460,01,747,-71,33,-11,627264,78,12,1']
SA = [('+QENG: "servingcell","NOCONN","NR5G-SA","TDD",460,01,19013B004,299,690E0F,633984,'
      "78,12,-107,-13,2,1,-")]


def test_qeng_lte_all_fields() -> None:
    cell = ap.parse_qeng(LTE)
    assert cell is not None
    assert (cell.state, cell.technology, cell.mcc_mnc, cell.nr) == ("NOCONN", "LTE", "46001", None)
    assert cell.lte == ap.LteCell(
        duplex="FDD", mcc="460", mnc="01", cell_id="5F1EA15", pci=12, earfcn=1650, band=3,
        ul_bandwidth=5, dl_bandwidth=5, tac="DE10", rsrp=-100, rsrq=-12, rssi=-68, sinr=11,
        cqi=0, tx_power=None, srxlev=27)  # -32768 is the firmware's "invalid"


def test_qeng_nsa_lines_and_field_order() -> None:
    cell = ap.parse_qeng(NSA)
    assert cell is not None
    assert (cell.state, cell.technology) == ("NOCONN", "NR5G-NSA")
    assert cell.lte is not None
    assert cell.nr is not None
    assert (cell.lte.rsrp, cell.lte.rsrq, cell.lte.rssi, cell.lte.sinr) == (-99, -12, -67, 11)
    assert (cell.lte.cqi, cell.lte.tx_power, cell.lte.srxlev) == (9, 230, None)
    # NSA line: <PCID>,<RSRP>,<SINR>,<RSRQ> -- SINR before RSRQ
    assert cell.nr == ap.NrCell(mcc="460", mnc="01", pci=747, rsrp=-71, sinr=33, rsrq=-11,
                                arfcn=627264, band=78, dl_bandwidth=12, scs=1)


def test_qeng_sa_field_order() -> None:
    cell = ap.parse_qeng(SA)
    assert cell is not None
    assert (cell.state, cell.technology, cell.lte, cell.mcc_mnc) == ("NOCONN", "NR5G-SA",
                                                                      None, "46001")
    assert cell.nr == ap.NrCell(duplex="TDD", mcc="460", mnc="01", cell_id="19013B004",
                                pci=299, tac="690E0F", arfcn=633984, band=78, dl_bandwidth=12,
                                rsrp=-107, rsrq=-13, sinr=2, scs=1, srxlev=None)


def test_qeng_sa_with_space_and_lower_case_hex() -> None:
    # RM520N-GL capture shape: a space after "TDD", lower-case cell id in some firmware
    cell = ap.parse_qeng([('+QENG: "servingcell","CONNECT","NR5G-SA","TDD", 310,260,'
                          "18666712f,335,794E00,516270,41,12,-75,-11,5,1,-")])
    assert cell is not None
    assert cell.nr is not None
    assert (cell.state, cell.nr.cell_id, cell.nr.band, cell.nr.rsrp, cell.nr.sinr) == (
        "CONNECT", "18666712F", 41, -75, 5)
    assert cell.mcc_mnc == "310260"


def test_qeng_short_lte_line_of_older_firmware() -> None:
    # EP06: ...,<RSRP>,<RSRQ>,<RSSI>,<SINR>,<srxlev> without CQI and tx_power
    cell = ap.parse_qeng([('+QENG: "servingcell","NOCONN","LTE","FDD",222,88,4CAA71F,28,1500,'
                          "3,3,3,77B8,-84,-9,-56,21,35")])
    assert cell is not None
    assert cell.lte is not None
    assert (cell.lte.rsrp, cell.lte.rsrq, cell.lte.rssi, cell.lte.sinr, cell.lte.band) == (
        -84, -9, -56, 21, 3)
    assert cell.mcc_mnc == "22288"


@pytest.mark.parametrize(("lines", "state", "technology"), [
    (['+QENG: "servingcell","SEARCH"'], "SEARCH", None),
    ([('+QENG: "servingcell","LIMSRV","LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,'
      "-118,-17,-90,3,-,-,-")], "LIMSRV", "LTE"),
    ([('+QENG: "servingcell","CONNECT","LTE","TDD",460,00,A1B2C3D,301,38950,40,5,5,'
      "24E1,-85,-9,-60,18,12,150,40")], "CONNECT", "LTE"),
    (['+QENG: "servingcell","NOCONN"',
      '+QENG: "LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,-99,-12,-67,11,9,230,-'],
     "NOCONN", "LTE"),  # EN-DC capable but no NR leg yet
    (['+QENG: "servingcell","NOCONN","WCDMA",460,01,A5F3,2B6C1E3,10713,3,16,-85,-6,-,-,-,-,-'],
     "NOCONN", "WCDMA"),
    ([('+QENG: "servingcell","NOCONN","CAT-M","FDD",262,03,2FAA03,187,6300,20,3,3,9A4E,'
      "-107,-14,-78,11,20")], "NOCONN", "LTE-M"),
])
def test_qeng_states(lines: list[str], state: str, technology: str | None) -> None:
    cell = ap.parse_qeng(lines)
    assert cell is not None
    assert (cell.state, cell.technology) == (state, technology)


def test_qeng_placeholders_and_limsrv_values() -> None:
    cell = ap.parse_qeng([('+QENG: "servingcell","LIMSRV","LTE","FDD",460,01,5F1EA15,12,1650,'
                          "3,5,5,DE10,-118,-17,-90,3,-,-,-")])
    assert cell is not None
    assert cell.lte is not None
    assert (cell.lte.rsrp, cell.lte.cqi, cell.lte.tx_power, cell.lte.srxlev) == (
        -118, None, None, None)
    nsa = ap.parse_qeng(['+QENG: "servingcell","NOCONN"',
                         ('+QENG: "LTE","FDD",460,01,5F1EA15,12,1650,3,5,5,DE10,-99,-12,-67,11,'
                         "9,230,-"),
                         '+QENG: "NR5G-NSA",460,01,-,-,-,-,-,-,-,-'])
    assert nsa is not None
    assert nsa.nr is not None
    assert nsa.technology == "NR5G-NSA"
    assert (nsa.nr.pci, nsa.nr.rsrp, nsa.nr.sinr, nsa.nr.band) == (None, None, None, None)


def test_qeng_skips_neighbour_cells_and_noise() -> None:
    cell = ap.parse_qeng(['+QENG: "neighbourcell intra","LTE",38950,276,-3,-88,-65,0,37,7,16,6',
                          "garbage", *LTE])
    assert cell is not None
    assert cell.lte is not None
    assert cell.lte.rsrp == -100
    assert ap.parse_qeng(["+CSQ: 23,99", "RING"]) is None
    assert ap.parse_qeng([]) is None


@pytest.mark.parametrize(("line", "rssi", "ber"), [
    ("+CSQ: 23,99", -67, 99), ("+CSQ: 0,0", -113, 0), ("+CSQ: 31,99", -51, 99),
    ("+CSQ: 99,99", None, 99), ("+CSQ: 100,99", -116, 99), ("+CSQ: 191,99", -25, 99),
    ("+CSQ: 199,99", None, 99), ("+CSQ:23,99", -67, 99), ("+CSQ: 23", -67, None),
])
def test_csq(line: str, rssi: int | None, ber: int | None) -> None:
    assert ap.parse_csq([line]) == ap.Csq(rssi, ber)


def test_csq_garbage() -> None:
    assert ap.parse_csq(["+CSQ: ,", "+CSQ: x,1", "OK"]) is None


@pytest.mark.parametrize(("line", "cops", "technology"), [
    ('+COPS: 0,0,"CHINA MOBILE",7', ap.Cops(0, 0, "CHINA MOBILE", 7), "LTE"),
    ('+COPS: 0,0,"CHN-UNICOM",13', ap.Cops(0, 0, "CHN-UNICOM", 13), "NR5G-NSA"),
    ('+COPS: 0,0,"CHINA MOBILE",12', ap.Cops(0, 0, "CHINA MOBILE", 12), "NR5G-SA"),
    ('+COPS: 1,2,"26201",7', ap.Cops(1, 2, "26201", 7), "LTE"),
    ('+COPS: 0,0,"AT&T, Inc.",7', ap.Cops(0, 0, "AT&T, Inc.", 7), "LTE"),
    ("+COPS: 0", ap.Cops(0, None, None, None), None),
    ('+COPS: 0,1,"TDG",2', ap.Cops(0, 1, "TDG", 2), "WCDMA"),
])
def test_cops(line: str, cops: ap.Cops, technology: str | None) -> None:
    parsed = ap.parse_cops([line])
    assert parsed == cops
    assert parsed.technology == technology


def test_registration_read_forms() -> None:
    r = ap.parse_registration(["+CEREG: 0,1"], "CEREG")
    assert r == ap.Registration("CEREG", 1)
    assert (r.state, r.registered) == ("home", True)
    r = ap.parse_registration(['+CEREG: 2,5,"DE10","5F1EA15",7'], "CEREG")
    assert r == ap.Registration("CEREG", 5, "DE10", "5F1EA15", 7)
    assert (r.state, r.registered) == ("roaming", True)
    r = ap.parse_registration(['+C5GREG: 2,1,"690E0F","19013B004",11,1,"01"'], "C5GREG")
    assert r == ap.Registration("C5GREG", 1, "690E0F", "19013B004", 11)
    for stat, state, registered in ((0, "idle", False), (2, "searching", False),
                                    (3, "denied", False), (4, "unknown", False),
                                    (6, "home-sms-only", True), (8, "emergency-only", False)):
        r = ap.parse_registration([f"+CREG: 0,{stat}"], "CREG")
        assert r is not None
        assert (r.state, r.registered) == (state, registered)


def test_registration_skips_interleaved_urcs() -> None:
    # unsolicited +CREG: <stat> and +CREG: <stat>,"<lac>","<ci>",<act> around the read form
    lines = ["+CREG: 1", '+CREG: 1,"0001","80D413D",7', "+CREG: 0,2", "+CREG: 5"]
    assert ap.parse_registration(lines, "CREG") == ap.Registration("CREG", 2)
    assert ap.parse_registration(["+CREG: 1"], "CREG") is None
    assert ap.parse_registration(["+CEREG: 0,1"], "CREG") is None


def test_qtemp_rm5xx_named_sensors() -> None:
    t = ap.parse_qtemp(['+QTEMP: "modem-lte-sub6-pa1","37"', '+QTEMP: "modem-mmw0","-273"',
                        '+QTEMP: "aoss-0-usr","41"', '+QTEMP: "cpuss-0-usr","43"'])
    assert t == ap.Temperatures((("modem-lte-sub6-pa1", 37.0), ("modem-mmw0", -273.0),
                                 ("aoss-0-usr", 41.0), ("cpuss-0-usr", 43.0)))
    assert t.hottest == 43.0


def test_qtemp_ec2x_and_absent_sensors() -> None:
    t = ap.parse_qtemp(["+QTEMP: 32,30,31"])
    assert t == ap.Temperatures((("pmic", 32.0), ("xo", 30.0), ("pa", 31.0)))
    assert t.hottest == 32.0
    ec200 = ap.parse_qtemp(["+QTEMP: 38,255,255"])
    assert ec200 is not None
    assert ec200.hottest == 38.0
    unplausible = ap.parse_qtemp(['+QTEMP: "mmw0","-273"'])
    assert unplausible is not None
    assert unplausible.hottest is None
    assert ap.parse_qtemp(["+QTEMP: ,,"]) is None


@pytest.mark.parametrize(("model", "scale"), [
    ("RM500Q-GL", "2x-20"), ("RM520N-GL", "2x-20"), ("RG502Q-EA", "2x-20"),
    ("EC25", "x/5-20"), ("EG25", "x/5-20"), ("EP06", "x/5-20"), ("BG96", "x/5-20"),
    ("EC200T", "db"), ("SIM7600E", "db"), (None, "db"),
])
def test_lte_sinr_scale_by_model(model: str | None, scale: str) -> None:
    assert ap.lte_sinr_for_model(model) == scale


def test_lte_sinr_conversions() -> None:
    assert ap.lte_sinr_db(11, "2x-20") == 2  # the RM5xx note's example: X=11
    assert ap.lte_sinr_db(111, "x/5-20") == 2.2
    assert ap.lte_sinr_db(21, "db") == 21
    assert ap.lte_sinr_db(11, "auto", "EC25") == -17.8
    assert ap.lte_sinr_db(None, "2x-20") is None


def test_build_status_nsa() -> None:
    status = ap.build_status(
        model="RM500Q-GL", csq=ap.parse_csq(["+CSQ: 24,99"]), cell=ap.parse_qeng(NSA),
        cops=ap.parse_cops(['+COPS: 0,0,"CHINA MOBILE",13']),
        registrations=[ap.Registration("C5GREG", 0), ap.Registration("CEREG", 1),
                       ap.Registration("CREG", 1)],
        temperatures=ap.parse_qtemp(['+QTEMP: "cpuss-0-usr","43"']))
    assert status.as_dict() == {
        "source": "at", "model": "RM500Q-GL", "state": "NOCONN", "technology": "NR5G-NSA",
        "operator": "CHINA MOBILE", "operator_code": "46001", "registration": "home",
        "registered": True, "rsrp": -99, "rsrq": -12, "sinr": 2, "rssi": -67,
        "nr_rsrp": -71, "nr_rsrq": -11, "nr_sinr": 33, "cell_id": "5F1EA15",
        "band": "B3+n78", "temperature": 43.0, "signal_quality": None}


def test_build_status_sa_uses_nr_and_csq_rssi() -> None:
    status = ap.build_status(model="RM500Q-GL", csq=ap.parse_csq(["+CSQ: 20,99"]),
                             cell=ap.parse_qeng(SA),
                             registrations=[ap.Registration("C5GREG", 1)])
    assert (status.technology, status.rsrp, status.rsrq, status.sinr, status.rssi) == (
        "NR5G-SA", -107, -13, 2, -73)
    assert (status.cell_id, status.band, status.registration) == ("19013B004", "n78", "home")


def test_build_status_searching_and_cops_fallback() -> None:
    status = ap.build_status(cell=ap.parse_qeng(['+QENG: "servingcell","SEARCH"']),
                             cops=ap.parse_cops(["+COPS: 0"]),
                             registrations=[ap.Registration("CEREG", 2),
                                            ap.Registration("CREG", 0)])
    assert (status.state, status.technology, status.registration, status.registered) == (
        "SEARCH", None, "searching", False)
    assert (status.rsrp, status.operator, status.band) == (None, None, None)
    only_cops = ap.build_status(cops=ap.parse_cops(['+COPS: 0,2,"46001",7']))
    assert (only_cops.technology, only_cops.operator_code) == ("LTE", "46001")
    assert only_cops.registered is None


# --- fuzzing: never an unexpected exception ------------------------------------------------

REAL = [*LTE, *NSA, *SA, "+CSQ: 23,99", '+COPS: 0,0,"CHINA MOBILE",13', "+CREG: 0,1",
        '+CEREG: 2,1,"DE10","5F1EA15",7', "+C5GREG: 0,1", '+QTEMP: "aoss-0-usr","41"',
        "+QTEMP: 32,30,31", "RM500Q-GL"]
PARSERS = (ap.parse_csq, ap.parse_cops, ap.parse_qeng, ap.parse_qtemp, ap.parse_model,
           lambda lines: ap.parse_registration(lines, "CREG"),
           lambda lines: ap.parse_registration(lines, "CEREG"))


def _parse_all(lines: list[str]) -> None:
    results = [parse(lines) for parse in PARSERS]
    regs = [r for r in results if isinstance(r, ap.Registration)]
    status = ap.build_status(model=ap.parse_model(lines), csq=ap.parse_csq(lines),
                             cell=ap.parse_qeng(lines), cops=ap.parse_cops(lines),
                             registrations=regs, temperatures=ap.parse_qtemp(lines))
    for reading in status.readings("modem", 0):
        assert reading.value is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=80), max_size=6))
def test_random_text_never_raises(lines: list[str]) -> None:
    _parse_all(lines)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REAL), st.integers(min_value=0, max_value=120),
       st.sampled_from(["", "-", ",", '"', "-32768", "x", "\x00", ",,,,"]))
def test_truncated_and_mangled_real_lines_never_raise(line: str, cut: int, junk: str) -> None:
    _parse_all([line[:cut] + junk])
    _parse_all([line[:cut], junk + line[cut:]])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*REAL, '+QENG: "servingcell"', '+QENG: "LTE"',
                                 '+QENG: "NR5G-SA",', "+QTEMP:", '+COPS: "x"', "+CREG: ,"]),
                max_size=8))
def test_shuffled_real_lines_never_raise(lines: list[str]) -> None:
    _parse_all(lines)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10))
def test_line_splitter_takes_any_bytes(chunks: list[bytes]) -> None:
    async def run() -> list[str]:
        engine = AtEngine("/dev/null-modem")
        lines: list[str] = []

        def on_line(proto: _LineProtocol, line: str) -> None:
            lines.append(line)
            engine._on_line(proto, line)  # as URCs: no command pending

        proto = _LineProtocol(on_line, lambda _p, _e: None)
        engine._proto = proto
        for chunk in chunks:
            proto.data_received(chunk)
        return lines

    lines = asyncio.run(run())
    assert all(line == line.strip() and line and "\r" not in line and "\n" not in line
               for line in lines)

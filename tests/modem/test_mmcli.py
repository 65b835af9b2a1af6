"""The ModemManager source: mmcli JSON as ModemManager prints it, a fake mmcli on PATH."""

from __future__ import annotations

import json
import time

import pytest

from drivers.modem import mmcli as mm
from drivers.modem.mmcli import MmcliSource
from drivers.modem.model import ModemStatus
from gateway.errors import DeviceConfigError, TransientError
from tests.modem.conftest import RECORDED, FakeMmcli, build_driver, sample

M0 = "/org/freedesktop/ModemManager1/Modem/0"
M3 = "/org/freedesktop/ModemManager1/Modem/3"


def recorded(name: str) -> object:
    return json.loads((RECORDED / f"{name}.json").read_text())


def test_status_from_recorded_lte() -> None:
    status = mm.status_from_mmcli(recorded("modem-lte"), recorded("signal-lte"),
                                  recorded("location"))
    assert status == ModemStatus(
        source="modemmanager", model="EM06-E", state="connected", technology="LTE",
        operator="Telekom.de", operator_code="26201", registration="home", registered=True,
        rsrp=-112.0, rsrq=-17.0, sinr=-2.0, rssi=-74.0, cell_id="0143E1C3",
        signal_quality=58)


def test_status_from_recorded_nsa_and_sa() -> None:
    nsa = mm.status_from_mmcli(recorded("modem-nsa"), recorded("signal-nsa"))
    assert (nsa.technology, nsa.rsrp, nsa.rsrq, nsa.sinr, nsa.rssi) == (
        "NR5G-NSA", -95.0, -11.0, 9.4, -67.0)
    assert (nsa.nr_rsrp, nsa.nr_rsrq, nsa.nr_sinr, nsa.operator, nsa.signal_quality) == (
        -88.0, -10.5, 14.0, "CHN-UNICOM", 72)
    sa = mm.status_from_mmcli(recorded("modem-sa"), recorded("signal-sa"))
    assert (sa.technology, sa.state, sa.registration, sa.registered) == (
        "NR5G-SA", "registered", "roaming", True)
    assert (sa.rsrp, sa.rsrq, sa.sinr, sa.rssi, sa.nr_rsrp) == (-101.0, -12.0, 6.5, None,
                                                                -101.0)


def test_status_while_searching_leaves_unknowns_out() -> None:
    status = mm.status_from_mmcli(recorded("modem-searching"), recorded("signal-unset"))
    assert {r.metric: r.value for r in status.readings("modem", 1)} == {
        "state": "searching", "registration": "searching", "registered": 0,
        "signal_quality": 0}


@pytest.mark.parametrize(("access", "tech"), [
    (["lte"], "LTE"), (["lte", "5gnr"], "NR5G-NSA"), (["5gnr"], "NR5G-SA"),
    (["umts", "hsdpa", "hsupa"], "WCDMA"), (["gsm"], "GSM"), (["lte-cat-m"], "LTE-M"),
    ("lte", "LTE"), ([], None), (None, None), ([5], None),
])
def test_access_technologies(access: object, tech: str | None) -> None:
    assert mm.technology(access) == tech


def test_junk_documents() -> None:
    for doc in (None, [], "x", {"modem": []}, {"modem": {"generic": "x"}},
                {"modem": {"generic": {"signal-quality": {"value": "nan"}}}}):
        assert mm.status_from_mmcli(doc, doc, doc) == ModemStatus(source="modemmanager")
    assert mm.modem_list({"modem-list": [M0, 3, None]}) == [M0]
    assert mm.modem_list({"modem-list": "x"}) == []


def test_matches() -> None:
    doc = recorded("modem-nsa")
    assert mm.matches("3", M3)
    assert mm.matches(M3, M3)
    assert mm.matches("861234567890123", M3, doc)
    assert mm.matches("cdc-wdm0", M3, doc)
    assert not mm.matches("0", M3, doc)
    assert not mm.matches("866680040112569", M3, doc)


async def test_reads_through_fake_mmcli(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one", modem_0="modem-lte", signal="signal-lte",
                   location="location")
    source = MmcliSource()
    status = await source.read()
    assert status == mm.status_from_mmcli(recorded("modem-lte"), recorded("signal-lte"),
                                          recorded("location"))
    assert source.path == M0
    assert fake_mmcli.calls() == ["-L -J", f"-m {M0} -J", f"-m {M0} --signal-get -J",
                                  f"-m {M0} --location-get -J"]


async def test_sets_up_signal_refresh_once(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one", modem_0="modem-lte", signal="signal-unset")
    source = MmcliSource(signal_refresh=5)
    first = await source.read()
    second = await source.read()
    assert first.rsrp is None
    assert second.state == "connected"
    setups = [c for c in fake_mmcli.calls() if "--signal-setup" in c]
    assert setups == [f"-m {M0} --signal-setup=5"]
    assert sum("--location-get" in c for c in fake_mmcli.calls()) == 2  # no location: fine


async def test_picks_modem_by_imei_and_follows_a_new_index(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-two", modem_0="modem-lte", modem_3="modem-nsa",
                   signal="signal-nsa")
    source = MmcliSource(modem="861234567890123")
    status = await source.read()
    assert (source.path, status.model, status.technology) == (M3, "RM500Q-GL", "NR5G-NSA")
    # the modem resets and comes back as Modem/0 (ModemManager hands out a new index)
    fake_mmcli.use(list="list-one", modem_0="modem-nsa", modem_3="")
    status = await source.read()
    assert (source.path, status.operator) == (M0, "CHN-UNICOM")
    by_index = MmcliSource(modem="0")
    assert (await by_index.read()).model == "RM500Q-GL"


async def test_no_modem_and_no_match(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-empty")
    with pytest.raises(TransientError, match="sees no modem") as exc:
        await MmcliSource().read()
    assert exc.value.kind == "no_modem"
    fake_mmcli.use(list="list-two", modem_0="modem-lte", modem_3="modem-nsa")
    with pytest.raises(TransientError, match=r"no modem matches '123'.*has modem 0, 3"):
        await MmcliSource(modem="123").read()


async def test_mmcli_error_exit(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one")  # but no modem-0.json: mmcli exits 1
    with pytest.raises(TransientError, match="error: couldn't find modem") as exc:
        await MmcliSource().read()
    assert exc.value.kind == "mmcli"


async def test_signal_failure_keeps_the_rest(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one", modem_0="modem-nsa")
    status = await MmcliSource().read()
    assert (status.technology, status.operator, status.rsrp) == ("NR5G-NSA", "CHN-UNICOM", None)


async def test_mmcli_hangs(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-one", modem_0="modem-lte")
    (fake_mmcli.dir / "sleep").write_text("5")
    started = time.monotonic()
    with pytest.raises(TransientError) as exc:
        await MmcliSource(timeout=0.5).read()
    assert exc.value.kind == "timeout"
    assert time.monotonic() - started < 3  # killed, not waited for


async def test_mmcli_missing() -> None:
    with pytest.raises(DeviceConfigError, match="not found"):
        await MmcliSource(mmcli="/nonexistent/mmcli").read()


async def test_driver_with_modemmanager(fake_mmcli: FakeMmcli) -> None:
    fake_mmcli.use(list="list-two", modem_0="modem-lte", modem_3="modem-nsa",
                   signal="signal-nsa", location="location")
    driver = build_driver({"modem": "861234567890123"})
    m = driver.ctx.metrics
    await driver.open()
    try:
        readings = {r.metric: (r.value, r.unit) for r in await driver.poll()}
        assert readings == {
            "state": ("connected", None), "technology": ("NR5G-NSA", None),
            "operator": ("CHN-UNICOM", None), "operator_code": ("46001", None),
            "registration": ("home", None), "registered": (1, None),
            "rsrp": (-95.0, "dBm"), "rsrq": (-11.0, "dB"), "sinr": (9.4, "dB"),
            "rssi": (-67.0, "dBm"), "nr_rsrp": (-88.0, "dBm"), "nr_rsrq": (-10.5, "dB"),
            "nr_sinr": (14.0, "dB"), "cell_id": ("0143E1C3", None),
            "signal_quality": (72, "%")}
        assert sample(m, "parkgate_modem_signal_rsrp_dbm", device="modem", rat="nr") == -88.0
        assert sample(m, "parkgate_modem_signal_sinr_db", device="modem", rat="lte") == 9.4
        assert sample(m, "parkgate_modem_signal_quality_percent", device="modem") == 72.0
        assert sample(m, "parkgate_modem_info", device="modem", technology="NR5G-NSA",
                      operator="CHN-UNICOM", band="", cell_id="0143E1C3") == 1.0
        fake_mmcli.use(list="list-empty")
        with pytest.raises(TransientError):
            await driver.poll()
        assert sample(m, "parkgate_modem_registered", device="modem") is None
    finally:
        await driver.close()

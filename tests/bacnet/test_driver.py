"""The BACnet driver against bacpypes3 devices on loopback: RPM, RP fallback, COV, faults."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import DeviceConfigError, TransientError

from .conftest import Rig

COV = 4
"""Objects of the simulated device that take COV: bacpypes3 3's devices have no COV for
binary-value (cov-subscription-failed) nor multi-state-value (operational-problem), which
exercises the fallback to polling of those two."""
REFUSED = 2

async def test_rpm_reads_every_object_with_units_and_kinds(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev, cov=False)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 6)
    got = {r.metric: r for r in sink.readings[:6]}
    assert got["supply_temp"].value == 21.5
    assert got["supply_temp"].unit == "°C"
    assert got["valve"].unit == "%"
    assert got["enable"].value is False
    assert got["pump"].value is True
    assert got["mode"].value == 2
    assert got["mode"].unit is None
    assert all(r.quality == "good" for r in got.values())
    # one RPM for the six objects, not one request per property
    assert rig.sample("parkgate_bacnet_requests_total", device="ahu", service="rpm") >= 1
    assert rig.sample("parkgate_bacnet_requests_total", device="ahu", service="read") == 0
    dev.set("analog-input,1", 23.0)
    await sink.value("supply_temp", 23.0)


async def test_device_without_rpm_is_read_property_by_property(rig: Rig) -> None:
    dev = await rig.device(rpm=False, cov=False)
    d = await rig.driver(dev)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 12)  # two polls
    assert {r.metric: r.value for r in sink.readings[:6]}["supply_temp"] == 21.5
    assert all(r.quality == "good" for r in sink.readings)
    rpm = rig.sample("parkgate_bacnet_requests_total", device="ahu", service="rpm")
    assert rpm == 1, "RPM was tried once, then remembered as unsupported"
    assert rig.sample("parkgate_bacnet_requests_total", device="ahu", service="read") >= 12


async def test_cov_values_arrive_without_polling(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev, interval="30s")  # polls would be far too slow to see this
    sink = rig.start(d)
    await sink.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == COV)
    before = rig.sample("parkgate_bacnet_cov_notifications_total", device="ahu")
    dev.set("analog-value,2", 25.5)
    r = await sink.value("setpoint", 25.5)
    assert (r.unit, r.quality) == ("°C", "good")
    dev.set("binary-output,5", "inactive")
    await sink.value("pump", False)
    assert rig.sample("parkgate_bacnet_cov_notifications_total", device="ahu") > before
    # status-flags travel with the value: out-of-service makes it uncertain
    dev.obj("analog-input,1").statusFlags = [0, 0, 0, 1]
    dev.set("analog-input,1", 30.0)
    r = await sink.value("supply_temp", 30.0)
    assert r.quality == "uncertain"


async def test_device_without_cov_is_polled(rig: Rig) -> None:
    dev = await rig.device(cov=False)
    d = await rig.driver(dev)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 6)
    await asyncio.sleep(0.1)
    assert rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == 0
    dev.set("analog-value,2", 26.0)
    await sink.value("setpoint", 26.0)


async def test_cov_subscriptions_are_renewed_before_their_lifetime_ends(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev, cov_lifetime="10s", interval="500ms")
    sink = rig.start(d)
    await sink.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == COV)
    subscribed = rig.sample("parkgate_bacnet_requests_total", device="ahu",
                            service="subscribe-cov")
    assert subscribed == COV + REFUSED
    await asyncio.sleep(8.2)  # renewal at 3/4 of 10 s
    assert rig.sample("parkgate_bacnet_requests_total", device="ahu",
                      service="subscribe-cov") == 2 * COV + REFUSED
    detections = dev.app._cov_detections
    assert detections, "the device still holds our subscriptions"
    dev.set("analog-input,1", 40.0)
    await sink.value("supply_temp", 40.0)


async def test_deleted_object_is_bad_alone_and_the_rest_flows(rig: Rig) -> None:
    dev = await rig.device(cov=False)
    d = await rig.driver(dev)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 6)
    dev.delete("analog-output,3")
    dev.set("analog-input,1", 22.5)
    await sink.value("supply_temp", 22.5)
    await sink.wait(lambda: (r := sink.last("valve")) is not None and r.quality == "bad")
    bad = sink.last("valve")
    assert bad is not None and bad.value is None and bad.unit == "%"
    assert sink.last("setpoint") is not None and sink.last("setpoint").quality == "good"


async def test_deleted_object_without_rpm(rig: Rig) -> None:
    dev = await rig.device(rpm=False, cov=False)
    dev.delete("multi-state-value,6")
    d = await rig.driver(dev)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 6)
    by = {r.metric: r for r in sink.readings[:6]}
    assert by["mode"].quality == "bad"
    assert by["supply_temp"].quality == "good"


async def test_dead_device_raises_transient_and_a_restart_recovers(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev)
    sink = rig.start(d)
    await sink.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == COV)
    await dev.stop()
    with pytest.raises(TransientError) as err:
        await asyncio.wait_for(sink.task, 5)  # type: ignore[arg-type]
    assert err.value.kind == "timeout"
    await d.close()
    # the device comes back (forgot its subscriptions); the supervisor reopens the driver
    await dev.start()
    d2 = await rig.driver(dev, name="ahu")
    sink2 = rig.start(d2)
    await sink2.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions",
                                        device="ahu") == COV)
    dev.set("analog-value,2", 19.5)
    await sink2.value("setpoint", 19.5)


async def test_device_id_is_checked_with_who_is(rig: Rig) -> None:
    dev = await rig.device(device_id=1234)
    d = await rig.driver(dev, device_id=1234)
    assert d is not None
    with pytest.raises(DeviceConfigError, match="is device 1234, not 999"):
        await rig.driver(dev, name="other", device_id=999)


async def test_devices_share_one_port_and_must_agree(rig: Rig) -> None:
    a = await rig.device(1001)
    b = await rig.device(1002, rpm=False)
    da = await rig.driver(a, name="a", cov=False)
    db = await rig.driver(b, name="b", cov=False)
    assert len(rig.pool) == 1
    sa, sb = rig.start(da), rig.start(db)
    await sa.wait(lambda: len(sa.readings) >= 6)
    await sb.wait(lambda: len(sb.readings) >= 6)
    opts = rig.options(a, "c").model_dump()
    opts["network"]["device_id"] = 77
    from drivers.bacnet import BacnetDriver, BacnetOptions
    from tests.support import driver_context

    c = BacnetDriver(BacnetOptions.model_validate(opts),
                     driver_context("c", rig.pool, rig.metrics))
    with pytest.raises(DeviceConfigError, match="device_id"):
        await c.open()
    await c.close()


async def test_port_taken_by_another_program_is_a_config_error(rig: Rig) -> None:
    import socket

    dev = await rig.device()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", rig.port))
        with pytest.raises(DeviceConfigError, match="cannot bind"):
            await rig.driver(dev)
    assert len(rig.pool) == 0
    rig.drivers.clear()


async def test_foreign_device_registers_with_the_bbmd_and_reads(rig: Rig) -> None:
    from emulators.bacnet_device import BacnetDevice

    from .conftest import free_udp_port

    port = free_udp_port()
    bbmd = BacnetDevice(f"127.0.0.4/8:{port}", 2999, bbmd=True)
    rig.devices.append(bbmd)
    await bbmd.start()
    dev = await rig.device()
    d = await rig.driver(dev, cov=False, network={
        "address": "127.0.0.1", "port": rig.port,
        "foreign": {"bbmd": f"127.0.0.4:{port}", "ttl": "60s"}})
    assert d._link is not None and d._link.registered
    fdt = bbmd.app.bbmd.bbmdFDT
    assert [str(e.fdAddress) for e in fdt] == [f"127.0.0.1:{rig.port}"]
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 6)


async def test_silent_bbmd_is_a_transient_error(rig: Rig, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    from drivers.bacnet import link

    from .conftest import free_udp_port

    monkeypatch.setattr(link, "REGISTER_TIMEOUT", 0.3)
    dev = await rig.device()
    with pytest.raises(TransientError, match="did not answer the foreign-device"):
        await rig.driver(dev, network={"address": "127.0.0.1", "port": rig.port,
                                       "foreign": {"bbmd": f"127.0.0.1:{free_udp_port()}"}})
    assert len(rig.pool) == 0
    rig.drivers.clear()


async def test_fast_restart_announced_by_i_am_resubscribes(rig: Rig) -> None:
    """A device that restarts between two polls forgets its subscriptions; its I-Am on
    start makes the driver subscribe again at once instead of at the next renewal."""
    dev = await rig.device()
    d = await rig.driver(dev, interval="30s")
    sink = rig.start(d)
    await sink.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == COV)
    await dev.stop()
    await dev.start()
    assert not dev.app._cov_detections
    dev.announce(f"127.0.0.1:{rig.port}")

    def subscribes() -> float:
        return rig.sample("parkgate_bacnet_requests_total", device="ahu",
                          service="subscribe-cov")

    async with asyncio.timeout(5):
        while subscribes() < 2 * COV + REFUSED:
            await asyncio.sleep(0.05)
    dev.set("analog-value,2", 21.0)
    await sink.value("setpoint", 21.0)


async def test_small_device_answers_too_big_and_gets_smaller_batches(rig: Rig) -> None:
    """A controller with small buffers aborts an RPM whose answer does not fit
    (segmentation-not-supported); the driver halves its batches until they do, and
    remembers it."""
    dev = await rig.device(rpm_limit=6, extra_analog=20)
    objects = [{"name": f"s{i}", "object": f"analog-input,{100 + i}"} for i in range(20)]
    d = await rig.driver(dev, cov=False, objects=objects, max_per_request=20)
    sink = rig.start(d)
    await sink.wait(lambda: len(sink.readings) >= 40)  # two full polls
    assert {r.metric: r.value for r in sink.readings[-20:]} == {
        f"s{i}": float(i) for i in range(20)}
    assert all(r.quality == "good" for r in sink.readings)
    caps = d._link.caps(dev.address)  # type: ignore[union-attr]
    assert caps.rpm and caps.max_per_request == 5  # 20 -> 10 -> 5
    rpms = rig.sample("parkgate_bacnet_requests_total", device="ahu", service="rpm")
    assert rpms == 2 + 4 * (len(sink.readings) // 20)  # the two refused, then 4 a poll


async def test_the_default_any_address_binding_reads_and_subscribes(rig: Rig) -> None:
    dev = await rig.device()
    d = await rig.driver(dev, network={"port": rig.port})  # address 0.0.0.0
    sink = rig.start(d)
    await sink.wait(lambda: rig.sample("parkgate_bacnet_cov_subscriptions", device="ahu") == COV)
    dev.set("analog-value,2", 23.5)
    await sink.value("setpoint", 23.5)

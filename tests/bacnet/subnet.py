"""A BACnet/IP subnet in a network namespace of its own (run by test_subnet.py as root
through `unshare -n`): gateway and devices all on UDP 47808 at 10.9.0.0/24, as on site.

Loopback tests cannot do this: bacpypes3 treats any 127.x address on its own port as
itself, so there the gateway and the devices need different ports and broadcasts are
directed by hand. Prints one JSON line of what was observed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "hardware-in-loop")]

from emulators.bacnet_device import BacnetDevice  # noqa: E402

from drivers.bacnet import BacnetDriver, BacnetOptions  # noqa: E402
from drivers.bacnet.link import Link, LinkSettings  # noqa: E402
from gateway.driver import ResourcePool  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.model import Reading  # noqa: E402
from tests.support import driver_context, metric_value  # noqa: E402

GATEWAY, DEVICES = "10.9.0.1", ["10.9.0.2", "10.9.0.3"]
ROUTER = ("10.9.0.10", "10.9.1.10")
"""A BACnet router between network 1 (the gateway's subnet) and network 2001 (10.9.1.0/24)."""
BEHIND = "10.9.1.2"
"""A device on network 2001, reached through the router as 2001:10.9.1.2."""


def network_up() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for host in [GATEWAY, *DEVICES, *ROUTER]:
        subprocess.run(["ip", "addr", "add", f"{host}/24", "dev", "lo"], check=True)
    subprocess.run(["ip", "addr", "add", f"{BEHIND}/24", "dev", "lo"], check=True)


def start_router() -> Any:
    from bacpypes3.app import Application
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject

    ports = [NetworkPortObject(f"{host}/24:47808", objectIdentifier=("network-port", n + 1),
                               objectName=f"port-{n + 1}", networkNumber=net,
                               networkNumberQuality="configured")
             for n, (host, net) in enumerate(zip(ROUTER, (1, 2001), strict=True))]
    device = DeviceObject(objectIdentifier=("device", 9000), objectName="router",
                          vendorIdentifier=999)
    return Application.from_object_list([device, *ports])


async def until(pred: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


async def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    router = start_router()
    await asyncio.sleep(0.2)  # its sockets bind in tasks
    behind = await BacnetDevice(f"{BEHIND}/24:47808", 5001).start()
    devs = [await BacnetDevice(f"{host}/24:47808", 3001 + i).start()
            for i, host in enumerate(DEVICES)]
    # discovery by the default local broadcast of the gateway's subnet
    link = await Link.start(LinkSettings(f"{GATEWAY}/24", 47808, 4194002))
    try:
        found = await link.discover(3000, 5999, None, 1.0)
        out["discovered"] = sorted((i.instance, i.address) for i in found)
    finally:
        await link.aclose()

    pool, metrics = ResourcePool(), Metrics()
    opts = BacnetOptions.model_validate({
        "name": "ahu", "driver": "bacnet", "address": DEVICES[0], "device_id": 3001,
        "network": {"address": f"{GATEWAY}/24"}, "interval": "30s",
        "objects": [{"name": "setpoint", "object": "analog-value,2"}]})
    got: list[Reading] = []
    d = BacnetDriver(opts, driver_context("ahu", pool, metrics))
    await d.open()
    task = asyncio.create_task(d.run(got.extend))
    vav_opts = opts.model_copy(update={"name": "vav", "address": f"2001:{BEHIND}:47808",
                                       "device_id": 5001})
    vav_got: list[Reading] = []
    vav = BacnetDriver(vav_opts, driver_context("vav", pool, metrics))
    await vav.open()
    vav_task = asyncio.create_task(vav.run(vav_got.extend))

    def subscribes() -> float:
        return metric_value(metrics, "parkgate_bacnet_requests_total", device="ahu",
                            service="subscribe-cov")

    try:
        await until(lambda: subscribes() == 1)
        devs[0].set("analog-value,2", 24.5)
        await until(lambda: any(r.value == 24.5 for r in got))
        # a restart between two polls: the device broadcasts I-Am as it comes back
        await devs[0].stop()
        await devs[0].start()
        devs[0].app.i_am()  # global broadcast, as controllers do on start
        await until(lambda: subscribes() == 2)
        devs[0].set("analog-value,2", 19.0)
        await until(lambda: any(r.value == 19.0 for r in got))
        out["resubscribed_after_i_am"] = True
        out["values"] = [r.value for r in got]
        # the device behind the router: read, subscribed, and its COV routed back
        await until(lambda: metric_value(metrics, "parkgate_bacnet_cov_subscriptions",
                                         device="vav") == 1)
        behind.set("analog-value,2", 27.5)
        await until(lambda: any(r.value == 27.5 for r in vav_got))
        out["behind_router"] = [r.value for r in vav_got]
    finally:
        for t in (task, vav_task):
            t.cancel()
        await asyncio.gather(task, vav_task, return_exceptions=True)
        await d.close()
        await vav.close()
        for dev in [*devs, behind]:
            await dev.stop()
        router.close()
    return out


if __name__ == "__main__":
    network_up()
    print(json.dumps(asyncio.run(main())), flush=True)

"""A broker that refuses our credentials: the log names the keys of the dialect in use."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import logs
from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.uplink import Uplink
from tests.platforms.support import section
from tests.support import Mosquitto

HINTS = {
    "parkgate": "check uplink.mqtt.username and password",
    "thingsboard": "check uplink.mqtt.thingsboard.access_token",
    "aliyun": "check uplink.mqtt.aliyun.product_key, device_name and device_secret",
    "huawei": "check uplink.mqtt.huawei.device_id and secret",
}


@pytest.fixture(scope="module")
def guarded() -> Iterator[Mosquitto]:
    """A broker that knows one user only: every dialect's CONNECT here is refused."""
    b = Mosquitto(password=("someone-else", "not-ours-4711"))
    b.dir.chmod(0o755)  # mosquitto started as root reads the password file as its user
    b.start()
    yield b
    b.close()


@pytest.mark.parametrize("dialect", sorted(HINTS))
async def test_refused_credentials_name_the_dialects_keys(
        dialect: str, guarded: Mosquitto, tmp_path: Path) -> None:
    mqtt: dict[str, Any] = {"brokers": [guarded.url], "client_id": f"pg-hint-{dialect}",
                            "backoff_max": "1s", "dialect": dialect}
    if dialect == "parkgate":
        mqtt |= {"username": "gw", "password": "wrong"}
    else:
        mqtt[dialect] = section(dialect, ["meter-1"])
    src = MemorySource()
    with capture_logs() as logged:
        up = Uplink(MqttSection.model_validate(mqtt), GatewaySection(id="gw-1", site="park"),
                    src, Metrics(), logs.get_logger(), drops=src,
                    state_path=tmp_path / "b.db")
        task = asyncio.create_task(up.run())
        try:
            for _ in range(100):
                refused = [e for e in logged if "refused our credentials" in e["event"]]
                if refused:
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert refused, logged[-5:]
    event = refused[0]["event"]
    assert HINTS[dialect] in event and "readings stay in the buffer" in event
    if dialect != "parkgate":
        assert "uplink.mqtt.username" not in event
    assert refused[0]["log_level"] == "error"

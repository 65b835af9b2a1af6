"""The native dialect's guarantees for each platform dialect: kill -9 at random moments and a
broker outage, with 0 readings lost (same patterns as tests/core/test_kill9.py and
tests/core/test_uplink.py, parametrized over the dialects).

Platform payloads carry no seq, so completeness is counted the platform's way: every
reading the buffer accepted (seqs 1..next_seq-1) must arrive as a distinct
(device, metric, ts) at the subscriber (the sim's polls give each reading its own key)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.platforms.support import DIALECTS, PlatformCollector, section
from tests.support import (
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    scrape,
    wait_metric,
    write_config,
)

KILLS = 4
FLOW = [{"name": f"sim-{i}", "driver": "sim", "interval": "20ms", "points": 20,
         "pattern": "counter"} for i in (1, 2)]
"""2000 readings/s over two sub-devices."""


def platform_config(tmp: Path, port: int, dialect: str, **mqtt: Any) -> Path:
    secret = tmp / "secret"
    secret.write_text("s3cret-device-key-for-tests\n")
    secret.chmod(0o600)
    cfg = base_config(tmp, port, FLOW, agent={"shutdown_grace": "15s"}, uplink={"mqtt": {
        "brokers": [f"mqtt://127.0.0.1:{port}"], "dialect": dialect,
        "batch": {"max_readings": 500, "max_delay": "100ms"},
        dialect: section(dialect, [d["name"] for d in FLOW], secret), **mqtt}})
    return write_config(tmp / "gw.yaml", cfg)


def assert_all_arrived(c: PlatformCollector, cfg: Path, floor: int) -> int:
    """Buffer empty and every accepted reading at the platform; returns how many."""
    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    last = int(stats["next_seq"]) - 1
    assert last > floor, stats
    c.wait_for(lambda c: len(c.seen) >= last, 30)
    assert len(c.seen) == last, f"{last - len(c.seen)} of {last} readings never arrived"
    print(f"{c.dialect}: {last} readings, {c.deliveries - last} duplicates")
    return last


@pytest.mark.parametrize("dialect", DIALECTS)
def test_kill9_loses_no_reading(dialect: str, tmp_path: Path, broker: Mosquitto,
                                gateways: list[GatewayProcess]) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"kill9 {dialect} seed={seed}")
    cfg = platform_config(tmp_path, broker.port, dialect)
    c = PlatformCollector(broker.port, dialect)
    try:
        c.ready()
        for i in range(KILLS):
            seen = len(c.seen)
            gw = GatewayProcess(cfg).start()
            gateways.append(gw)
            if i == KILLS - 1:
                delay = rng.uniform(0.1, 0.8)  # once during start-up
            else:
                assert c.wait_for(lambda c, n=seen: len(c.seen) > n, 30), gw.output()[-2000:]
                delay = rng.uniform(0.0, 1.2)
            time.sleep(delay)
            assert gw.alive(), gw.output()[-2000:]
            gw.kill()
        gw = GatewayProcess(cfg).start()
        gateways.append(gw)
        seen = len(c.seen)
        assert c.wait_for(lambda c: len(c.seen) > seen + 100, 20), gw.output()[-2000:]
        assert gw.stop() == 0, gw.output()[-3000:]
        assert "s3cret-device-key-for-tests" not in gw.output()
        assert_all_arrived(c, cfg, 1_000)  # a floor: runs gave 2,700-3,800
    finally:
        c.close()


@pytest.fixture
def pbroker() -> Iterator[Mosquitto]:
    b = Mosquitto(persistent=True).start()
    yield b
    b.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_broker_outage_loses_no_reading(dialect: str, tmp_path: Path, pbroker: Mosquitto,
                                        gateways: list[GatewayProcess]) -> None:
    cfg = platform_config(tmp_path, pbroker.port, dialect, backoff_max="2s")
    listen = yaml.safe_load(cfg.read_text())["metrics"]["listen"]
    c = PlatformCollector(pbroker.port, dialect, persistent=True)
    try:
        c.ready()
        gw = GatewayProcess(cfg).start()
        gateways.append(gw)
        assert c.wait_for(lambda c: len(c.seen) > 500, 20), gw.output()[-2000:]
        wait_metric(listen, "parkgate_uplink_connected", lambda v: v == 1)
        pbroker.stop()
        wait_metric(listen, "parkgate_uplink_connected", lambda v: v == 0, 10)
        time.sleep(4.0)
        assert scrape(listen)["parkgate_buffer_readings"] >= 3000  # buffered meanwhile
        pbroker.start()
        wait_metric(listen, "parkgate_uplink_connected", lambda v: v == 1, 15)
        seen = len(c.seen)
        assert c.wait_for(lambda c: len(c.seen) > seen + 3000, 20), gw.output()[-2000:]
        assert gw.stop() == 0, gw.output()[-3000:]
        assert_all_arrived(c, cfg, 5_000)  # a floor: runs gave 9,700-12,600
    finally:
        c.close()

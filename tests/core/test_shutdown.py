"""SIGTERM: an orderly shutdown that delivers (or keeps) every accepted reading."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support import (
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    wait_subscribed,
    write_config,
)

FLOW = [{"name": f"sim-{i}", "driver": "sim", "interval": "20ms", "points": 50,
         "pattern": "counter"} for i in (1, 2)]
"""A steady flow of 5000 readings/s."""


def sigterm(gw: GatewayProcess) -> tuple[int, float]:
    """SIGTERM; the exit code and how long the agent took to exit."""
    started = time.monotonic()
    rc = gw.stop(timeout=30)
    return rc, time.monotonic() - started


def missing(c: Collector, last: int, timeout: float = 20.0) -> list[int]:
    """Seqs of 1..last the collector has not seen after waiting up to `timeout`."""
    want = set(range(1, last + 1))
    deadline = time.monotonic() + timeout
    while not want <= set(c.seqs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return sorted(want - set(c.seqs()))


def test_sigterm_mid_flow_delivers_everything(tmp_path: Path, broker: Mosquitto,
                                              collector: Collector,
                                              gateways: list[GatewayProcess]) -> None:
    """SIGTERM at 5000 readings/s: exit 0 fast, buffer empty, every seq delivered."""
    wait_subscribed(collector, broker.port)
    cfg = write_config(tmp_path / "gw.yaml", base_config(tmp_path, broker.port, FLOW))
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: len(c.messages) >= 20, 20), gw.output()[-3000:]
    rc, took = sigterm(gw)
    print(f"SIGTERM mid-flow: exit {rc} after {took:.2f}s")
    assert rc == 0, gw.output()[-3000:]
    assert took < 5.0
    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    last = stats["next_seq"] - 1
    assert last > 1000
    assert missing(collector, last) == []
    assert max(collector.seqs()) == last
    out = gw.output()
    assert '"drained": true' in out, out[-2000:]
    assert collector.retained["parkgate/test/test-gw/status"]["state"] == "offline"


@pytest.mark.parametrize("outage", ["stopped", "paused"])
def test_sigterm_with_broker_down_keeps_readings(tmp_path: Path, broker: Mosquitto,
                                                 collector: Collector,
                                                 gateways: list[GatewayProcess],
                                                 outage: str) -> None:
    """SIGTERM while the broker is down (or stalled with PUBACKs pending): exit 0 after the
    grace; the next start delivers what was kept."""
    grace = 2.0
    cfg = write_config(tmp_path / "gw.yaml", base_config(
        tmp_path, broker.port, FLOW, agent={"shutdown_grace": f"{grace}s"}))
    wait_subscribed(collector, broker.port)
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: len(c.messages) >= 5, 20), gw.output()[-3000:]
    if outage == "stopped":
        broker.stop()
    else:
        broker.pause()
    try:
        time.sleep(1.5)  # readings pile up in the buffer
        rc, took = sigterm(gw)
    finally:
        if outage == "stopped":
            broker.start()
        else:
            broker.resume()
    print(f"SIGTERM, broker {outage}: exit {rc} after {took:.2f}s (grace {grace}s)")
    assert rc == 0, gw.output()[-3000:]
    # grace, then up to 2 s for the retained `offline` status to a stalled broker
    assert took < grace + 4.0
    assert "shutdown grace period over" in gw.output()
    kept = buffer_stats(cfg)
    assert kept["rows"] > 1000, kept
    before = len(collector.seqs())

    wait_subscribed(collector, broker.port)  # the collector is back and subscribed
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    # what was kept goes out first thing
    assert collector.wait_for(
        lambda c: sum(len(m["readings"]) for _t, m in c.messages) >= before + kept["rows"], 20)
    rc, _took = sigterm(gw)
    assert rc == 0
    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    last = stats["next_seq"] - 1
    assert last >= kept["next_seq"]  # new readings got seqs above the kept ones
    assert missing(collector, last) == []

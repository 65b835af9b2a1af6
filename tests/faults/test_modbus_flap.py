"""A Modbus meter whose TCP server goes away and comes back, again and again."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    METER_POINTS,
    Agent,
    FaultRow,
    MeterThread,
    SeqCollector,
    config,
    finish,
    meter,
    persistent_broker,
    sim,
)

pytestmark = pytest.mark.faults

FLAPS = 5


def _count(agent: Agent, device: str) -> float:
    return agent.metrics().get(f'parkgate_readings_total{{device="{device}"}}', 0.0)


@pytest.mark.alone  # poll rates within a few percent
def test_modbus_device_flapping(tmp_path: Path, report: Callable[[FaultRow], None]) -> None:
    broker = persistent_broker()
    flappy, steady = MeterThread().start(), MeterThread().start()
    col = SeqCollector(broker.port, "flap")
    cfg = config(tmp_path, broker.port, [
        meter("flappy", flappy.port, "200ms"), meter("steady", steady.port, "200ms"),
        sim("sim", "50ms", 10)])
    agent = Agent(tmp_path, cfg).start()
    recover: list[float] = []
    try:
        assert col.wait_for(lambda c: c.device_count("flappy") > 0, 20), agent.output()
        start = time.monotonic()
        before = {d: _count(agent, d) for d in ("steady", "sim")}
        for _ in range(FLAPS):
            flappy.stop()
            time.sleep(1.0)
            flappy.start()
            t0, n0 = time.monotonic(), _count(agent, "flappy")
            while _count(agent, "flappy") <= n0 and time.monotonic() - t0 < 15:
                time.sleep(0.05)
            assert _count(agent, "flappy") > n0, agent.output()
            recover.append(time.monotonic() - t0)
            time.sleep(0.5)
            assert agent.alive(), agent.output()
        elapsed = time.monotonic() - start
        # the other devices kept their rate all along (5 polls/s and 20 polls/s)
        steady_rate = (_count(agent, "steady") - before["steady"]) / METER_POINTS / elapsed
        sim_rate = (_count(agent, "sim") - before["sim"]) / 10 / elapsed
        errors = sum(v for k, v in agent.metrics().items()
                     if k.startswith('parkgate_poll_errors_total{device="flappy"'))
        out = finish(agent, col)  # a meter flapping breaks no MQTT session: no duplicate
        report(FaultRow("Modbus meter flapping", FLAPS, issued=out.issued, lost=len(out.lost),
                        duplicates=out.duplicates, duplicate_bound=out.duplicate_bound,
                        recover_s=max(recover),
                        notes=f"others kept their rate: steady {steady_rate:.2f}/5 polls/s, "
                              f"sim {sim_rate:.1f}/20; {errors:.0f} poll errors on flappy"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert 4.6 <= steady_rate <= 5.1 and 19 <= sim_rate <= 20.5
        assert errors >= FLAPS
    finally:
        agent.proc.kill()
        col.close()
        flappy.close()
        steady.close()
        broker.close()

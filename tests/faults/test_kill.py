"""kill -9 of the agent at random moments, with commits and publishes always in progress."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
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

KILLS = 22


def test_kill9_at_random_moments_loses_nothing(tmp_path: Path,
                                               report: Callable[[FaultRow], None]) -> None:
    """22 kills after a random 0-400 ms (7 ms steps) of publishing; then every seq arrives."""
    rng = random.Random(7)
    broker = persistent_broker()
    meter_emu = MeterThread().start()
    col = SeqCollector(broker.port, "kill")
    # ~3,000 readings/s committed every 20 ms with full fsync, batches of 200 and a window
    # of 16: at almost any instant a commit or a publish awaiting PUBACK is in progress.
    cfg = config(tmp_path, broker.port,
                 [sim("fast", "5ms", 14), meter("meter", meter_emu.port, "100ms")],
                 mqtt={"window": 16})
    agent = Agent(tmp_path, cfg)
    recover: list[float] = []
    inflight_at_kill = 0
    commit_s = commits = 0.0
    try:
        agent.start()
        for i in range(KILLS):
            before = col.max_seq
            started = time.monotonic()
            came_up = col.wait_beyond(before, timeout=20)
            assert came_up is not None, f"restart {i}: nothing published\n{agent.output()}"
            recover.append(time.monotonic() - started)
            m = agent.metrics()  # how busy the pipeline is right before the kill
            inflight_at_kill += m.get("parkgate_uplink_inflight_messages", 0) > 0
            commit_s += m.get("parkgate_buffer_commit_duration_seconds_sum", 0.0)
            commits += m.get("parkgate_buffer_commits_total", 0.0)
            time.sleep(rng.randrange(0, 400, 7) / 1000)  # random delay, small steps
            agent.kill9()
            assert not agent.alive()
            agent.start()
        out = finish(agent, col, redeliveries=KILLS)  # each kill ends a session
        row = FaultRow("kill -9 of the agent", KILLS, issued=out.issued, lost=len(out.lost),
                       duplicates=out.duplicates, duplicate_bound=out.duplicate_bound,
                       recover_s=max(recover),
                       stayed_up=f"restarted {KILLS}x, each came up",
                       notes=f"PUBACKs pending at {inflight_at_kill}/{KILLS} kills; a commit "
                             f"every 20 ms takes {1000 * commit_s / max(commits, 1):.1f} ms")
        report(row)
        assert col.order_violations == 0
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert out.issued > 5_000  # the flow was real
    finally:
        agent.proc.kill()
        col.close()
        meter_emu.close()
        broker.close()

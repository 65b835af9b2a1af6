"""The wall clock jumps backwards and forwards under the running agent (libfaketime)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Agent,
    FaultRow,
    SeqCollector,
    config,
    finish,
    persistent_broker,
    sim,
)

pytestmark = pytest.mark.faults

LIBFAKETIME = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
               Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
               Path("/usr/lib/faketime/libfaketimeMT.so.1")]
HOUR_MS = 3_600_000


def _libfaketime() -> Path | None:
    return next((p for p in LIBFAKETIME if p.exists()), None)


def _max_gap(col: SeqCollector, device: str, start: float, end: float) -> float:
    """Longest wait between two deliveries of `device` within [start, end] (monotonic)."""
    times = [start] + [a.at for a in col.arrivals if a.device == device and start <= a.at <= end]
    times.append(end)
    return max(b - a for a, b in itertools.pairwise(times))


def _count(agent: Agent, device: str) -> float:
    return agent.metrics()[f'parkgate_readings_total{{device="{device}"}}']


@pytest.mark.alone  # poll rates within a few percent
@pytest.mark.parametrize(("name", "jump"), [("forward", "+1d"), ("backward", "-1h")])
def test_wall_clock_jumps(tmp_path: Path, report: Callable[[FaultRow], None],
                          name: str, jump: str) -> None:
    lib = _libfaketime()
    if lib is None:
        pytest.skip("libfaketime is not installed: apt-get install faketime")
    rc = tmp_path / "faketime.rc"
    rc.write_text("+0\n")
    env = {"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(rc),
           "FAKETIME_CACHE_DURATION": "1",
           # the monotonic clock never jumps on a real system; libfaketime would move it too
           "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           # libfaketime 0.9.10's "monotonic fix" makes each timed pthread wait take ~250 ms
           # (every ThreadPoolExecutor.submit): the agent then crawls at 10% of its rate
           "FAKETIME_FORCE_MONOTONIC_FIX": "0"}
    broker = persistent_broker()
    col = SeqCollector(broker.port, f"clock-{name}")
    cfg = config(tmp_path, broker.port, [sim("fast", "20ms", 10), sim("slow", "250ms", 1)],
                 mqtt={"batch": {"max_readings": 500, "max_delay": "1s"}})
    agent = Agent(tmp_path, cfg, env=env).start()
    try:
        assert col.wait_beyond(0, 20) is not None, agent.output()
        time.sleep(2.0)
        jumped_at = time.monotonic()
        counts = {d: _count(agent, d) for d in ("fast", "slow")}
        rc.write_text(f"{jump}\n")
        time.sleep(6.0)
        rc.write_text("+0\n")
        back_at = time.monotonic()
        # polls per second on the monotonic clock, across the jump
        rate, slow_rate = ((_count(agent, d) - counts[d]) / n / (back_at - jumped_at)
                           for d, n in (("fast", 10), ("slow", 1)))
        time.sleep(3.0)
        end = time.monotonic()
        assert agent.alive(), agent.output()
        # the jump reached the agent: readings stamped an hour (a day) off
        now_ms = time.time() * 1000
        offset = 24 * HOUR_MS if jump == "+1d" else -HOUR_MS
        shifted = [t for a in col.arrivals for t in a.ts if abs(t - now_ms - offset) < 60_000]
        assert shifted, "no reading carries the jumped clock: libfaketime had no effect"
        gap = max(_max_gap(col, d, jumped_at, back_at) for d in ("fast", "slow"))
        gap_after = max(_max_gap(col, d, back_at, end) for d in ("fast", "slow"))
        out = finish(agent, col)  # a clock jump breaks no session: no duplicate
        report(FaultRow(f"wall clock jump {jump}", 2, issued=out.issued, lost=len(out.lost),
                        duplicates=out.duplicates, duplicate_bound=out.duplicate_bound,
                        recover_s=max(gap, gap_after),
                        notes=f"polls/s during the jump: fast {rate:.1f} (want 50), "
                              f"slow {slow_rate:.1f} (want 4); longest delivery gap "
                              f"{gap:.1f}s"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert col.order_violations == 0
        assert 47 <= rate <= 51 and 3.7 <= slow_rate <= 4.2
        # batches wait at most max_delay (1s): deliveries keep flowing through the jump
        assert gap < 2.5 and gap_after < 2.5, (gap, gap_after)
    finally:
        agent.proc.kill()
        col.close()
        broker.close()

"""kill -9 at random moments, restart on the same buffer: every seq arrives, none is reused."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from tests.support import (
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    wait_subscribed,
    write_config,
)

KILLS = 7


def test_kill9_loses_no_seq_and_reuses_none(tmp_path: Path, broker: Mosquitto,
                                            collector: Collector,
                                            gateways: list[GatewayProcess]) -> None:
    """SIGKILL the agent KILLS times mid-flow; the subscriber still gets 1..max, no gap."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"kill9 seed={seed}")
    devices = [{"name": f"sim-{i}", "driver": "sim", "interval": "20ms", "points": 50,
                "pattern": "counter"} for i in (1, 2)]
    cfg = write_config(tmp_path / "gw.yaml", base_config(
        tmp_path, broker.port, devices, agent={"shutdown_grace": "15s"}))
    wait_subscribed(collector, broker.port)

    delays: list[float] = []
    for i in range(KILLS):
        seen = len(collector.messages)
        gw = GatewayProcess(cfg).start()
        gateways.append(gw)
        if i % 3 == 2:
            # now and then during start-up (buffer opening, connecting)
            delay = rng.uniform(0.1, 0.8)
        else:
            # mostly at a random moment while readings flow
            assert collector.wait_for(lambda c, n=seen: len(c.messages) > n, 30), \
                gw.output()[-2000:]
            delay = rng.uniform(0.0, 1.2)
        delays.append(round(delay, 2))
        time.sleep(delay)
        assert gw.alive(), gw.output()[-2000:]
        gw.kill()
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    seen = len(collector.messages)
    assert collector.wait_for(lambda c: len(c.messages) > seen + 5, 20), gw.output()[-2000:]
    # shutdown_grace 15 s of draining, then the offline status (2 s) and the close: the same
    # 30 s as tests/faults/harness.py Agent.stop (20 s left 5 s for those under load)
    assert gw.stop(timeout=30) == 0

    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    last = stats["next_seq"] - 1
    # the flow really ran across the kills: 5,000 seqs is a floor that a short random kill
    # schedule still clears (runs here gave 8,700-20,700); 10,000 failed on short draws
    assert last > 5_000, stats
    want = set(range(1, last + 1))
    collector.wait_for(lambda c: want <= set(c.seqs()), 30)

    readings = collector.readings()
    seqs = [r["seq"] for r in readings]
    missing = sorted(want - set(seqs))
    assert not missing, f"{len(missing)} seqs never arrived, first {missing[:10]} (seed {seed})"
    assert max(seqs) == last

    # same seq => the very same reading; and one reading never got two seqs
    by_seq: dict[int, tuple[Any, ...]] = {}
    by_reading: dict[tuple[Any, ...], int] = {}
    for r in readings:
        ident = (r["device"], r["metric"], r["ts"], r["value"])
        assert by_seq.setdefault(r["seq"], ident) == ident, (r["seq"], by_seq[r["seq"]], ident)
        assert by_reading.setdefault(ident, r["seq"]) == r["seq"], (ident, r["seq"])
    duplicates = len(seqs) - len(by_seq)
    print(f"kill9: {KILLS} kills at {delays}s, {last} seqs, {duplicates} duplicates")


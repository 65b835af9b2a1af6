"""The buffer file deleted or corrupted while the agent is stopped."""

from __future__ import annotations

import os
import random
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


def _first_new(col: SeqCollector, after: int, since_ms: int) -> int:
    """The lowest seq of a reading measured at or after `since_ms` (wall clock), among the
    arrivals after number `after`.

    The broker may redeliver old readings to the subscriber's persistent session first;
    they were measured before the restart. Telling them apart by their time, not by "seq
    already seen", keeps a seq reused for a new reading (a restart at 1) in view.
    """
    time.sleep(0.5)
    return min(s for a in col.arrivals[after:] for s, ts in zip(a.seqs, a.ts, strict=True)
               if ts >= since_ms)


def test_buffer_deleted_or_corrupted_while_stopped(tmp_path: Path,
                                                   report: Callable[[FaultRow], None]) -> None:
    broker = persistent_broker()
    col = SeqCollector(broker.port, "bufferfile")
    cfg = config(tmp_path, broker.port, [sim("fast", "10ms", 10)])
    cfg["agent"] = {"shutdown_grace": "2s"}
    agent = Agent(tmp_path, cfg).start()
    db = tmp_path / "buffer.db"
    recover: list[float] = []
    try:
        assert col.wait_beyond(0, 20) is not None, agent.output()
        time.sleep(1.0)

        # 1. deleted: stop (drained), remove the database, start again
        assert agent.stop() == 0
        issued_1 = int(agent.buffer_stats()["next_seq"])
        assert col.wait_for(lambda c: c.max_seq >= issued_1 - 1, 10)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        seen_before, arrivals, since = col.max_seq, len(col.arrivals), int(time.time() * 1000)
        t0 = time.monotonic()
        agent.start()
        assert col.wait_beyond(seen_before, 20) is not None, agent.output()
        recover.append(time.monotonic() - t0)
        restart_1 = _first_new(col, arrivals, since)
        assert restart_1 > seen_before and restart_1 >= issued_1
        time.sleep(1.0)

        # 2. corrupted: stop with readings still buffered (broker down), overwrite the middle
        broker.stop()
        time.sleep(1.5)
        assert agent.stop() == 0
        stats = agent.buffer_stats()
        issued_2, buffered = int(stats["next_seq"]), int(stats["rows"])
        assert buffered > 500, stats
        size = db.stat().st_size
        with db.open("r+b") as f:
            f.seek(size // 2 - 8192)
            f.write(random.Random(3).randbytes(16384))
            f.flush()
            os.fsync(f.fileno())
        in_file = set(range(restart_1, issued_2)) - col.seen  # unsent: go with the file
        broker.start()
        seen_before, arrivals, since = col.max_seq, len(col.arrivals), int(time.time() * 1000)
        t0 = time.monotonic()
        agent.start()
        assert col.wait_beyond(seen_before, 20) is not None, agent.output()
        recover.append(time.monotonic() - t0)
        restart_2 = _first_new(col, arrivals, since)
        m = agent.metrics()
        assert m["parkgate_buffer_corruptions_total"] == 1, agent.output()
        assert restart_2 >= issued_2 and restart_2 > seen_before
        moved = list(tmp_path.glob("buffer.db.corrupt-*"))
        assert moved, list(tmp_path.iterdir())
        loud = [e for e in agent.log_lines() if e.get("level") == "error"
                and "corrupt" in str(e.get("event"))]
        assert loud, agent.output()

        gaps = [range(issued_1, restart_1), range(issued_2, restart_2), in_file]
        # the agent stopped gracefully twice (drained) and the broker once with readings
        # in flight to the persistent subscriber
        out = finish(agent, col, gaps=gaps, redeliveries=1)
        report(FaultRow("buffer deleted / corrupted", 2, issued=out.issued, lost=len(out.lost),
                        duplicates=out.duplicates, duplicate_bound=out.duplicate_bound,
                        recover_s=max(recover),
                        notes=f"seq jumped {issued_1}->{restart_1}, {issued_2}->{restart_2}; "
                              f"{len(in_file)} unsent readings went with the corrupt file"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
    finally:
        agent.proc.kill()
        col.close()
        broker.close()

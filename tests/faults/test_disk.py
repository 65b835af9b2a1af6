"""The buffer's filesystem fills up: the agent stays up, counts, keeps readings, resumes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Agent,
    FaultRow,
    SeqCollector,
    config,
    fill,
    finish,
    mounted_tmpfs,
    persistent_broker,
    sim,
)

pytestmark = pytest.mark.faults


def _errors(agent: Agent) -> float:
    return agent.metrics().get("parkgate_buffer_write_errors_total", 0.0)


def test_disk_full_then_freed(tmp_path: Path, report: Callable[[FaultRow], None]) -> None:
    with mounted_tmpfs(tmp_path / "small", "2m") as small:
        if small is None:
            pytest.skip("cannot mount a 2 MiB tmpfs here (needs root and mount permission)")
        broker = persistent_broker()
        col = SeqCollector(broker.port, "disk")
        cfg = config(tmp_path, broker.port, [sim("fast", "20ms", 5)],
                     buffer={"path": str(small / "buffer.db")})
        agent = Agent(tmp_path, cfg).start()
        recover: list[float] = []
        try:
            assert col.wait_beyond(0, 20) is not None, agent.output()
            for round_ in range(2):
                # the broker goes away so the buffer must grow, then the disk fills up
                broker.stop()
                time.sleep(0.5)
                filled = fill(small)
                t0 = time.monotonic()
                while _errors(agent) <= 0 and time.monotonic() - t0 < 15:
                    time.sleep(0.2)
                errors = _errors(agent)
                assert errors > 0, agent.output()
                time.sleep(1.5)  # readings pile up in memory meanwhile
                assert agent.alive(), agent.output()
                m = agent.metrics()
                # Kept, not dropped: in memory while SQLite cannot write, or already in the
                # database when a WAL checkpoint freed enough room; the loss count below
                # checks that every one of them arrives.
                assert m.get('parkgate_buffer_dropped_total{reason="write_failed"}', 0) == 0
                if round_ == 1:
                    # the broker is back while the disk is still full: what was committed
                    # goes out, but acknowledgements cannot be recorded yet
                    broker.start()
                    time.sleep(1.5)
                    assert agent.alive(), agent.output()
                seen = col.max_seq
                (small / "filler").unlink()
                if round_ == 0:
                    broker.start()
                took = col.wait_beyond(seen, 30)
                assert took is not None, agent.output()
                recover.append(took)
                assert agent.alive(), agent.output()
            errors = _errors(agent)
            # each round stops the broker: the agent's session and the subscriber's end
            out = finish(agent, col, redeliveries=4)
            report(FaultRow("disk full (2 MiB tmpfs)", 2, issued=out.issued,
                            lost=len(out.lost), duplicates=out.duplicates,
                            duplicate_bound=out.duplicate_bound,
                            recover_s=max(recover),
                            notes=f"{errors:.0f} write errors counted; filled {filled} B"))
            assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        finally:
            agent.proc.kill()
            col.close()
            broker.close()


def test_seq_reservation_due_while_disk_full(tmp_path: Path,
                                             report: Callable[[FaultRow], None]) -> None:
    """The fsynced seq reservation (buffer.db.seq) runs out while the disk is full."""
    # 2 MiB like the test above: the buffer checkpoints its WAL every 1 MiB (SQLite's own
    # default, 4 MiB, let the WAL alone fill a small disk so that writes never recovered)
    with mounted_tmpfs(tmp_path / "small", "2m") as small:
        if small is None:
            pytest.skip("cannot mount a 2 MiB tmpfs here (needs root and mount permission)")
        broker = persistent_broker()
        col = SeqCollector(broker.port, "reserve")
        cfg = config(tmp_path, broker.port, [sim("fast", "10ms", 5)],
                     buffer={"path": str(small / "buffer.db")})
        agent = Agent(tmp_path, cfg).start()
        try:
            assert col.wait_beyond(0, 20) is not None, agent.output()
            assert agent.stop() == 0
            # the next reservation falls due after ~1,500 more readings (3 s at 500/s)
            first = int(agent.buffer_stats()["next_seq"])
            (small / "buffer.db.seq").write_text(f"{first + 1500}\n")
            broker.stop()
            agent.start()
            agent.wait_metrics()
            time.sleep(1.0)
            fill(small)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 6 and agent.alive():
                time.sleep(0.2)
            up = agent.alive()
            errors = _errors(agent) if up else float("nan")
            (small / "filler").unlink()
            broker.start()
            if not up:
                report(FaultRow("disk full at a seq reservation", 1, stayed_up="NO (crashed)",
                                notes="OSError from the .seq side file escapes the buffer"))
            assert up, agent.output()
            seen = col.max_seq
            took = col.wait_beyond(seen, 30)
            assert took is not None, agent.output()
            # the broker stopped once, with the agent already stopped (drained): only
            # the subscriber's session ended with messages in flight
            out = finish(agent, col, redeliveries=1)
            report(FaultRow("disk full at a seq reservation", 1, issued=out.issued,
                            lost=len(out.lost), duplicates=out.duplicates,
                            duplicate_bound=out.duplicate_bound, recover_s=took,
                            notes=f"{errors:.0f} write errors counted"))
            assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        finally:
            agent.proc.kill()
            col.close()
            broker.close()

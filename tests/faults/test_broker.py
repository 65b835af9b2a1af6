"""The broker stopped, frozen (SIGSTOP), restarted, or accepting but never acknowledging."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import (
    Agent,
    FaultRow,
    MeterThread,
    SeqCollector,
    SilentBroker,
    config,
    finish,
    meter,
    persistent_broker,
    sim,
)

pytestmark = pytest.mark.faults


def test_broker_stopped_paused_and_restarted(tmp_path: Path,
                                             report: Callable[[FaultRow], None]) -> None:
    broker = persistent_broker()
    meter_emu = MeterThread().start()
    col = SeqCollector(broker.port, "broker")
    cfg = config(tmp_path, broker.port, [sim("fast", "10ms", 10),
                                         meter("meter", meter_emu.port, "200ms")])
    agent = Agent(tmp_path, cfg).start()
    recover: list[float] = []
    faults = 0
    try:
        assert col.wait_beyond(0, 20) is not None, agent.output()
        for cycle in range(2):
            for fault in ("stop", "pause", "restart"):
                time.sleep(0.5)
                if fault == "stop":
                    broker.stop()
                    time.sleep(2.0)
                    broker.start()
                elif fault == "pause":
                    # longer than publish_timeout (3s): the agent gives the session up
                    broker.pause()
                    time.sleep(4.0 if cycle == 0 else 1.5)
                    broker.resume()
                else:
                    broker.restart()
                faults += 1
                seen = col.max_seq
                took = col.wait_beyond(seen, 30)
                assert took is not None, f"no delivery after {fault}\n{agent.output()}"
                recover.append(took)
                assert agent.alive(), agent.output()
        m = agent.metrics()
        reconnects = m.get("parkgate_uplink_reconnects_total", 0)
        # each fault ends the agent's session and the subscriber's
        out = finish(agent, col, redeliveries=2 * faults)
        report(FaultRow("broker stop/SIGSTOP/restart", faults, issued=out.issued,
                        lost=len(out.lost), duplicates=out.duplicates,
                        duplicate_bound=out.duplicate_bound, recover_s=max(recover),
                        notes=f"{reconnects:.0f} reconnects"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert reconnects >= faults
    finally:
        agent.proc.kill()
        col.close()
        meter_emu.close()
        broker.close()


def test_broker_that_never_acknowledges(tmp_path: Path,
                                        report: Callable[[FaultRow], None]) -> None:
    """CONNACK yes, PUBACK never: time out, reconnect, fail over, deliver everything."""
    silent = SilentBroker()
    broker = persistent_broker()
    col = SeqCollector(broker.port, "silent")
    broker.stop()  # the real broker comes up only later
    cfg = config(tmp_path, broker.port, [sim("fast", "10ms", 10)],
                 brokers=[silent.url, broker.url], mqtt={"publish_timeout": "2s"})
    agent = Agent(tmp_path, cfg).start()
    try:
        deadline = time.monotonic() + 30
        while silent.connections < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert silent.connections >= 3, agent.output()  # timed out and came back, twice
        assert silent.data_publishes > 0
        assert col.max_seq == 0
        timeouts = [e for e in agent.log_lines() if "not acknowledged" in str(e.get("error"))]
        assert timeouts, agent.output()
        broker.start()
        t0 = time.monotonic()
        assert col.wait_beyond(0, 30) is not None, agent.output()
        m = agent.metrics()
        assert m['parkgate_uplink_broker_info{broker="' + broker.url + '"}'] == 1
        recover = time.monotonic() - t0
        # every session with the silent broker ended with a window unacknowledged
        out = finish(agent, col, redeliveries=silent.connections)
        report(FaultRow("broker never sends PUBACK", silent.connections,
                        issued=out.issued, lost=len(out.lost), duplicates=out.duplicates,
                        duplicate_bound=out.duplicate_bound,
                        recover_s=recover,
                        notes=f"{silent.data_publishes} publishes unanswered, "
                              f"{len(timeouts)} timeouts, then failed over"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
    finally:
        agent.proc.kill()
        col.close()
        broker.close()
        silent.close()


def test_broker_refusing_publishes_keeps_readings(tmp_path: Path,
                                                  report: Callable[[FaultRow], None]) -> None:
    """An ACL denies the data topic for a while (a platform misconfiguration), then allows it."""
    broker = persistent_broker()
    acl = broker.dir / "acl"
    # `pattern`, not `topic` lines: Mosquitto 2.0 builds a client's `topic` ACL only when it
    # connects, so after a restart it silently drops messages for a persistent subscriber
    # restored from disk that has not reconnected yet (the agent may well publish first).
    acl.write_text("pattern readwrite parkgate/+/+/status\npattern read parkgate/#\n")
    acl.chmod(0o644)
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\n")
    broker.restart()
    col = SeqCollector(broker.port, "acl")
    cfg = config(tmp_path, broker.port, [sim("fast", "100ms", 5)])
    agent = Agent(tmp_path, cfg).start()
    try:
        agent.wait_metrics()
        time.sleep(3.0)
        refused = agent.metrics().get("parkgate_uplink_published_readings_total", 0)
        assert col.delivered == 0
        acl.write_text("pattern readwrite parkgate/#\n")
        broker.restart()  # the platform fixes its ACL
        took = col.wait_beyond(0, 20)
        out = finish(agent, col, timeout=5, redeliveries=2)  # one restart: both sessions
        report(FaultRow("broker refuses publishes (ACL)", 1, issued=out.issued,
                        lost=len(out.lost), duplicates=out.duplicates,
                        duplicate_bound=out.duplicate_bound, recover_s=took,
                        notes=f"{refused:.0f} refused readings counted as published"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
    finally:
        agent.proc.kill()
        col.close()
        broker.close()

"""Broker limits: a maximum packet size, a second gateway with the same client id."""

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
    finish,
    sim,
)
from tests.support import Mosquitto

pytestmark = pytest.mark.faults

MAX_PACKET = 3000


def _seq_ranges(lines: list[dict[str, object]]) -> list[range]:
    """The seqs the agent logged as dropped because they can never fit a message."""
    out = []
    for e in lines:
        if e.get("event", "").startswith("readings too large"):  # type: ignore[union-attr]
            for first, last in e["seqs"]:  # type: ignore[union-attr]
                out.append(range(first, last + 1))
    return out


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_broker_max_packet_size(tmp_path: Path, report: Callable[[FaultRow], None],
                                protocol: str) -> None:
    """`max_packet_size 3000`: batches split to fit, a reading that cannot fit is dropped.

    Found: the broker disconnected on the first oversized message, the agent resent the same
    oldest chunk after every reconnect and a small device got 1 of 35 readings through.
    MQTT 5 brokers announce the limit in CONNACK; for 3.1.1 it is `max_message_bytes`.
    """
    broker = Mosquitto(persistent=True, extra=f"max_packet_size {MAX_PACKET}").start()
    col = SeqCollector(broker.port, f"maxpacket{protocol}")
    mqtt: dict[str, object] = {"protocol": protocol}
    if protocol == "3.1.1":
        mqtt["max_message_bytes"] = MAX_PACKET  # 3.1.1 has no way to announce it
    huge = {**sim("huge", "1s", 1), "unit": "x" * (MAX_PACKET + 500)}
    # a poll of 40 readings (~4 KB) makes chunks larger than a message may be
    cfg = config(tmp_path, broker.port, [sim("chatty", "50ms", 40), sim("small", "1s", 1),
                                         huge], mqtt=mqtt)
    agent = Agent(tmp_path, cfg).start()
    try:
        agent.wait_metrics()
        # found: 1 of 35 readings of the small device got through in 30 s
        assert col.wait_for(lambda c: c.device_count("small") >= 8, 20), agent.output()
        time.sleep(2.0)
        m = agent.metrics()
        assert agent.alive(), agent.output()
        reconnects = m.get("parkgate_uplink_reconnects_total", 0)
        dropped = m.get('parkgate_buffer_dropped_total{reason="too_large"}', 0)
        out = finish(agent, col, gaps=_seq_ranges(agent.log_lines()))
        lines = agent.log_lines()
        gaps = _seq_ranges(lines)
        report(FaultRow(f"broker max_packet_size {MAX_PACKET} (MQTT {protocol})", 1,
                        issued=out.issued, lost=len(out.lost), duplicates=col.duplicates,
                        notes=f"{reconnects:.0f} reconnects, {dropped:.0f} readings too "
                              "large for any message dropped and counted (not lost)"))
        assert not out.lost, f"{len(out.lost)} readings lost, first {out.lost[:10]}"
        assert reconnects == 0, agent.output()  # the broker never had to cut us off
        assert dropped >= 2, agent.output()  # one `huge` reading a second
        assert sum(len(g) for g in gaps) >= dropped, (gaps, dropped)
        assert col.device_count("huge") == 0
        assert col.device_count("chatty") > 1000
    finally:
        agent.proc.kill()
        col.close()
        broker.close()

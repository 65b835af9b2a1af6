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
    # logged one line per message: few enough to stay below the log rate limit
    huge = {**sim("huge", "2s", 1), "unit": "x" * (MAX_PACKET + 500)}
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
        assert dropped >= 2, agent.output()  # one `huge` reading every 2 s
        assert sum(len(g) for g in gaps) >= dropped, (gaps, dropped)
        assert col.device_count("huge") == 0
        assert col.device_count("chatty") > 1000
    finally:
        agent.proc.kill()
        col.close()
        broker.close()


def test_unannounced_limit_is_named(tmp_path: Path) -> None:
    """A 3.1.1 broker cannot announce its limit: without `max_message_bytes` the agent
    cannot split, but the log names the setting once the same message fails again."""
    broker = Mosquitto(persistent=True, extra=f"max_packet_size {MAX_PACKET}").start()
    cfg = config(tmp_path, broker.port, [sim("chatty", "50ms", 40)],
                 mqtt={"protocol": "3.1.1"})
    agent = Agent(tmp_path, cfg).start()
    try:
        deadline = time.monotonic() + 40
        hints: list[dict[str, object]] = []
        while not hints and time.monotonic() < deadline:
            time.sleep(0.5)
            hints = [e for e in agent.log_lines()
                     if "uplink.mqtt.max_message_bytes" in str(e.get("event"))]
        assert hints, agent.output()
        assert int(hints[0]["message_bytes"]) > MAX_PACKET  # type: ignore[call-overload]
        assert hints[0]["level"] == "warning"
    finally:
        agent.proc.kill()
        broker.close()


def _two_gateways(tmp_path: Path, port: int, mqtt: dict[str, object]) -> list[Agent]:
    """Two agents with the same gateway.id (a copied config), their own buffers and devices."""
    agents = []
    for name in ("a", "b"):
        tmp = tmp_path / name
        tmp.mkdir()
        agents.append(Agent(tmp, config(tmp, port, [sim(f"dev-{name}", "100ms", 5)],
                                        mqtt=mqtt)))
    return agents


def _connected(agent: Agent) -> list[dict[str, object]]:
    return [e for e in agent.log_lines() if e.get("event") == "uplink connected"]


def test_same_gateway_id_gets_its_own_session(tmp_path: Path,
                                              report: Callable[[FaultRow], None]) -> None:
    """Found: two gateways with one gateway.id shared the client id and kicked each other
    off every few seconds. The default client id is now unique per install."""
    broker = Mosquitto(persistent=True).start()
    col = SeqCollector(broker.port, "twins")
    agents = _two_gateways(tmp_path, broker.port, {})
    for a in agents:
        a.start()
    try:
        assert col.wait_for(lambda c: c.device_count("dev-a") > 0
                            and c.device_count("dev-b") > 0, 20), agents[0].output()
        time.sleep(6.0)
        reconnects = [a.metrics().get("parkgate_uplink_reconnects_total", 0) for a in agents]
        ids = [str(_connected(a)[0]["client_id"]) for a in agents]
        first = ids[0]
        for a in agents:
            assert a.stop() == 0, a.output()
        # both share (gateway, seq) numbering, so account per device
        issued = lost = 0
        for a, name in zip(agents, "ab", strict=True):
            stats = a.buffer_stats()
            assert stats["rows"] == 0, stats
            want = set(range(1, int(stats["next_seq"])))
            issued += len(want)

            def got(c: SeqCollector, dev: str = f"dev-{name}") -> set[int]:
                return {s for x in c.arrivals if x.device == dev for s in x.seqs}

            col.wait_for(lambda c, want=want, got=got: want <= got(c), 10)
            lost += len(want - got(col))
        assert lost == 0, lost
        assert reconnects == [0, 0], (reconnects, agents[0].output())
        assert ids[0] != ids[1], ids
        assert all(i.startswith("parkgate-test-test-gw-") for i in ids), ids
        # the suffix lives next to the buffer: the same client id after a restart
        agents[0].start()
        agents[0].wait_metrics()
        deadline = time.monotonic() + 10
        while not _connected(agents[0])[1:] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _connected(agents[0])[-1]["client_id"] == first
        report(FaultRow("two gateways with one gateway.id (default client id)", 1,
                        issued=issued, lost=lost,
                        notes=f"{sum(reconnects):.0f} reconnects, client ids {ids}"))
    finally:
        for a in agents:
            a.proc.kill()
        col.close()
        broker.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_session_takeover_is_named(tmp_path: Path, report: Callable[[FaultRow], None],
                                   protocol: str) -> None:
    """An explicit client_id shared by two gateways: the log and a metric say takeover.

    Mosquitto 2.0.11 closes the old connection without a DISCONNECT 0x8E, also under MQTT
    5, so here the evidence is the losses right after CONNACK (0x8E: tests/core/test_session.py).
    """
    broker = Mosquitto(persistent=True).start()
    col = SeqCollector(broker.port, f"takeover{protocol}")
    agents = _two_gateways(tmp_path, broker.port,
                           {"client_id": "shared-id", "protocol": protocol})
    key = 'parkgate_uplink_session_takeovers_total{evidence="quick_losses"}'
    for a in agents:
        a.start()
    try:
        for a in agents:
            a.wait_metrics()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 40:
            if sum(a.metrics().get(key, 0) for a in agents) >= 2:
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        counts = [a.metrics().get(key, 0) for a in agents]
        assert sum(counts) >= 2, (counts, agents[0].output(), agents[1].output())
        lines = [e for a in agents for e in a.log_lines()]
        named = [e for e in lines if "another client may use our client id" in str(e["event"])]
        assert named and all(e["client_id"] == "shared-id" for e in named), lines[-20:]
        report(FaultRow(f"two gateways with one client_id (MQTT {protocol})", 1,
                        recover_s=took, notes=f"suspected takeovers logged and counted "
                                              f"{counts} (recover s: until named)"))
    finally:
        for a in agents:
            a.proc.kill()
        col.close()
        broker.close()

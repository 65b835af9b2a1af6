"""End to end: agents -> Mosquitto -> two `parkgate ingest` processes -> PostgreSQL.

Real processes killed with SIGKILL, a real broker, the machine's PostgreSQL.
"""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

import pytest
import yaml

from gateway.ingest.gaps import merge, subtract
from tests.ingest.conftest import IngestProcess, Pg, ingest_config
from tests.support import (
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    scrape,
    wait_metric,
    write_config,
)

pytestmark = pytest.mark.slow


def agent(tmp: Path, port: int, gw: str, **buffer: object) -> Path:
    d = tmp / gw
    d.mkdir()
    cfg = base_config(d, port, [{"name": "sim-1", "driver": "sim", "interval": "50ms",
                                 "points": 10, "pattern": "counter"}],
                      gateway={"id": gw, "site": "pgtest"})
    cfg["buffer"].update(buffer)
    return write_config(d / "gw.yaml", cfg)


def listen_of(cfg: Path) -> str:
    return str(yaml.safe_load(cfg.read_text())["metrics"]["listen"])


def stored(pg: Pg) -> dict[str, tuple[int, int, int]]:
    """gateway -> (rows, min seq, max seq)."""
    return {g: (n, lo, hi) for g, n, lo, hi in pg.query(
        "SELECT gateway, count(*), min(seq), max(seq) FROM {s}.readings GROUP BY gateway")}


def wait_until(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not true after {timeout}s: {what}")


def test_kill9_of_ingests_and_agents_loses_and_duplicates_nothing(
        tmp_path: Path, pg: Pg, broker: Mosquitto, gateways: list[GatewayProcess],
        ingests: list[IngestProcess]) -> None:
    # two processes on one shared subscription; each keeps its own session (instance id)
    listens = []
    for name in ("a", "b"):
        path, listen = ingest_config(tmp_path, pg, [broker.url], name=f"ingest-{name}")
        listens.append(listen)
        ingests.append(IngestProcess(path, name).start())
    for listen in listens:
        wait_metric(listen, f'parkgate_ingest_broker_connected{{broker="{broker.url}"}}',
                    lambda v: v == 1, timeout=30)
    names = ["gw-1", "gw-2", "gw-3"]
    configs = {gw: agent(tmp_path, broker.port, gw) for gw in names}
    procs = {gw: GatewayProcess(configs[gw]).start() for gw in names}
    gateways.extend(procs.values())
    wait_until(lambda: len(stored(pg)) == 3, 30, "every gateway has rows")

    for round_ in range(3):  # each ingest killed three times, each agent once
        for ing in ingests:
            time.sleep(1.5)
            ing.kill()  # SIGKILL: its unacknowledged messages stay in its broker session
            time.sleep(1.0)
            ing.start()
        gw = procs[names[round_]]
        time.sleep(1.0)
        gw.kill()  # SIGKILL: unacknowledged publishes are sent again after the restart
        time.sleep(0.5)
        gw.start()
    time.sleep(2.0)
    for gw in procs.values():
        assert gw.stop() == 0, gw.output()[-2000:]
    last = {}
    for gw in names:
        stats = buffer_stats(configs[gw])
        assert stats["rows"] == 0, stats  # drained on SIGTERM: everything reached the broker
        last[gw] = stats["next_seq"] - 1
    wait_until(lambda: {g: v[2] for g, v in stored(pg).items()} == last, 60,
               f"every seq stored: {last}")
    rows = stored(pg)
    for gw in names:
        count, lo, hi = rows[gw]
        assert (count, lo, hi) == (last[gw], 1, last[gw]), (gw, rows[gw])  # exactly once
    for listen in listens:
        for gw in names:
            wait_metric(listen, f'parkgate_ingest_last_seq{{gateway="{gw}"}}',
                        lambda v, gw=gw: v == last[gw], timeout=20)
            wait_metric(listen, f'parkgate_ingest_missing_readings{{gateway="{gw}"}}',
                        lambda v: v == 0, timeout=20)
    for ing in ingests:
        assert "Traceback" not in ing.output()


def test_gap_from_the_agents_buffer_cap_is_announced_by_the_agent_not_missing(
        tmp_path: Path, pg: Pg, gateways: list[GatewayProcess],
        ingests: list[IngestProcess]) -> None:
    broker = Mosquitto().start()
    try:
        path, listen = ingest_config(tmp_path, pg, [broker.url], after="1s")
        ingests.append(IngestProcess(path, "a").start())
        wait_metric(listen, f'parkgate_ingest_broker_connected{{broker="{broker.url}"}}',
                    lambda v: v == 1, timeout=30)
        cfg = agent(tmp_path, broker.port, "gw-gap", max_bytes="64KiB")
        gw = GatewayProcess(cfg).start()
        gateways.append(gw)
        wait_until(lambda: stored(pg).get("gw-gap", (0, 0, 0))[0] >= 200, 30, "first rows")
        agent_listen = listen_of(cfg)
        key = 'parkgate_buffer_dropped_total{reason="max_bytes"}'
        # a frozen broker (not a restart: Mosquitto 2.0 forgets shared subscriptions over a
        # restart, see test_broker_semantics.py): the agent buffers, reaches its cap and
        # drops its oldest readings
        broker.pause()
        wait_metric(agent_listen, key, lambda v: v >= 1000, timeout=60)
        broker.resume()
        # the agent's own drop notice (gateway/notices.py), nothing published by hand
        wait_metric(agent_listen, "parkgate_uplink_drop_notices_total", lambda v: v >= 1,
                    timeout=60)
        wait_metric(agent_listen, "parkgate_buffer_readings", lambda v: v < 300, timeout=60)
        dropped = scrape(agent_listen)[key]
        assert gw.stop() == 0
        last = buffer_stats(cfg)["next_seq"] - 1
        wait_until(lambda: stored(pg)["gw-gap"][2] == last, 60, "the rest arrived")
        seqs = [s for (s,) in pg.query(
            "SELECT seq FROM {s}.readings WHERE gateway = 'gw-gap' ORDER BY seq")]
        holes = merge([(a + 1, b - 1) for a, b in itertools.pairwise(seqs)
                       if b > a + 1])
        missing = sum(b - a + 1 for a, b in holes)
        # readings the agent dropped while their publish was already on its way (a frozen
        # broker reads them after the resume) still arrive: a gap of at most the drops
        assert 0 < missing <= dropped, (holes, dropped)
        announced = merge([(a, b) for a, b in pg.query(
            "SELECT first, last FROM {s}.readings_dropped WHERE gateway = 'gw-gap'")])
        assert subtract(holes, announced) == [], (holes, announced)
        # dropped on purpose, not missing: the ingest counts exactly the seqs that never
        # arrived as dropped (an announced seq that arrived anyway counts as received)
        wait_metric(listen, 'parkgate_ingest_missing_readings{gateway="gw-gap"}',
                    lambda v: v == 0, timeout=20)
        wait_metric(listen, 'parkgate_ingest_dropped_readings{gateway="gw-gap"}',
                    lambda v: v == missing, timeout=20)
        ingests[0].signal(signal.SIGTERM)
        assert ingests[0].proc is not None and ingests[0].proc.wait(10) == 0
        assert "gateway announced dropped readings" in ingests[0].output()
    finally:
        broker.close()


def test_database_connections_killed_mid_flow_lose_and_duplicate_nothing(
        tmp_path: Path, pg: Pg, broker: Mosquitto, gateways: list[GatewayProcess],
        ingests: list[IngestProcess]) -> None:
    path, listen = ingest_config(tmp_path, pg, [broker.url])
    ingests.append(IngestProcess(path, "a").start())
    wait_metric(listen, f'parkgate_ingest_broker_connected{{broker="{broker.url}"}}',
                lambda v: v == 1, timeout=30)
    client_id = yaml.safe_load(path.read_text())["source"]["client_id"] + "-a"
    cfg = agent(tmp_path, broker.port, "gw-db")
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    wait_until(lambda: "gw-db" in stored(pg), 30, "first rows")
    killed = 0
    for _ in range(6):
        time.sleep(0.7)
        # what a PostgreSQL restart or a failover does to the ingest's connections
        killed += len(pg.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s", f"parkgate-ingest writer {client_id}"))
    assert killed >= 3
    assert gw.stop() == 0
    last = buffer_stats(cfg)["next_seq"] - 1
    wait_until(lambda: stored(pg)["gw-db"] == (last, 1, last), 60, f"1..{last} stored once")
    metrics = scrape(listen)
    assert sum(v for k, v in metrics.items()
               if k.startswith("parkgate_ingest_db_errors_total")) >= 1
    wait_metric(listen, 'parkgate_ingest_missing_readings{gateway="gw-db"}', lambda v: v == 0,
                timeout=20)
    assert ingests[0].alive()

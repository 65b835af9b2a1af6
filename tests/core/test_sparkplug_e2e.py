"""The Sparkplug edge node end to end: `parkgate run` against a real Mosquitto, watched by a
host that decodes every payload with our protobuf module (tests/sparkplug_support.py)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.uplink.dialects.sparkplug import codec
from tests.sparkplug_support import Host, check_seq_order
from tests.support import GatewayProcess, Mosquitto, base_config, buffer_stats, write_config

NODE = "edge-1"


def config(tmp: Path, port: int, group: str, **sparkplug: Any) -> Path:
    devices = [{"name": f"sim-{i}", "driver": "sim", "interval": "50ms", "points": 4,
                "pattern": "counter"} for i in (1, 2)]
    cfg = base_config(tmp, port, devices, agent={"shutdown_grace": "15s"})
    cfg["uplink"]["mqtt"]["dialect"] = "sparkplug"
    cfg["uplink"]["mqtt"]["sparkplug"] = {"group": group, "node": NODE, **sparkplug}
    return write_config(tmp / "gw.yaml", cfg)


def start(cfg: Path, gateways: list[GatewayProcess]) -> GatewayProcess:
    """`parkgate run` on `cfg`, killed at the end of the test whatever happens."""
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    return gw


def group() -> str:
    return f"pg-{uuid.uuid4().hex[:10]}"  # unique per test: parallel runs do not collide


def bdseqs(host: Host, kind: str) -> list[int]:
    """The bdSeq of each NBIRTH/NDEATH, a message the broker delivered twice counted once."""
    unique = {m.raw: m for m in host.of(kind)}
    return [int(m.metric("bdSeq").long_value) for m in unique.values()]


def assert_births_before_data(host: Host) -> None:
    """Every DDATA's aliases were born in a DBIRTH of the same session before it."""
    born: set[int] = set()
    for m in host.messages:
        if m.kind == "NBIRTH":
            born = set()
        elif m.kind == "DBIRTH":
            born |= {metric.alias for metric in m.payload.metrics}
            assert all(metric.name and metric.datatype for metric in m.payload.metrics)
        elif m.kind == "DDATA":
            aliases = {metric.alias for metric in m.payload.metrics}
            assert aliases <= born, (m.topic, aliases - born)
            assert not any(metric.name for metric in m.payload.metrics)  # alias only


def all_seqs_arrived(host: Host, cfg: Path) -> None:
    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    want = set(range(1, stats["next_seq"]))
    assert host.wait(lambda h: want <= h.seqs(), 20), sorted(want - host.seqs())[:10]


@pytest.fixture
def kept() -> Iterator[Mosquitto]:
    """A broker that keeps sessions across its restarts (the host misses nothing)."""
    b = Mosquitto(persistent=True).start()
    yield b
    b.close()


def test_births_bdseq_across_kill9_and_broker_restart_and_rebirth(
        tmp_path: Path, kept: Mosquitto, gateways: list[GatewayProcess]) -> None:
    """NBIRTH seq 0 with bdSeq 0, 1, 2 ... over a kill -9 (the will NDEATH carries the
    killed session's bdSeq) and a broker restart; NCMD rebirth re-sends NBIRTH (same bdSeq)
    and every DBIRTH; a clean stop sends NDEATH; seq runs 0-255 per session; nothing lost."""
    g = group()
    host = Host(kept.port, g, persistent=True)
    cfg = config(tmp_path, kept.port, g)
    try:
        gw = start(cfg, gateways)
        assert host.wait(lambda h: len(h.of("DDATA")) >= 4, 30), gw.output()[-2000:]
        first = host.messages[0]
        assert first.kind == "NBIRTH" and first.seq == 0 and not first.retain
        assert first.metric("Node Control/Rebirth").boolean_value is False
        assert bdseqs(host, "NBIRTH") == [0]
        assert {m.device for m in host.of("DBIRTH")} == {"sim-1", "sim-2"}

        gw.kill()  # kill -9: the broker publishes the will
        assert host.wait(lambda h: len(bdseqs(h, "NDEATH")) == 1, 10)
        assert bdseqs(host, "NDEATH") == [0]
        gw = start(cfg, gateways)
        assert host.wait(lambda h: len(bdseqs(h, "NBIRTH")) == 2, 30), gw.output()[-2000:]
        assert bdseqs(host, "NBIRTH") == [0, 1]  # never the killed session's value

        kept.restart()  # the broker itself goes away: the gateway reconnects
        host.subscribed()
        assert host.wait(lambda h: len(bdseqs(h, "NBIRTH")) >= 3, 30), gw.output()[-2000:]
        assert bdseqs(host, "NBIRTH")[2] == 2
        seen = len(host.of("DDATA"))
        assert host.wait(lambda h: len(h.of("DDATA")) > seen + 3, 20)

        births = len(host.of("DBIRTH"))
        host.rebirth(NODE)
        assert host.wait(lambda h: len(bdseqs(h, "NBIRTH")) >= 4, 10)
        assert bdseqs(host, "NBIRTH")[3] == 2  # a rebirth is the same session
        assert host.wait(lambda h: len(h.of("DBIRTH")) >= births + 2, 10)

        assert gw.stop() == 0
        assert host.wait(lambda h: bdseqs(h, "NDEATH")[-1:] == [2], 10), \
            [m.kind for m in host.messages if m.kind != "DDATA"]
        # the will of session 1 when the broker went down, if it got out before the host's
        # own connection was cut: then with its own bdSeq
        # (at least once: the host may get it twice, once before and once after the restart)
        assert sorted(set(bdseqs(host, "NDEATH"))) in ([0, 2], [0, 1, 2])
        assert (tmp_path / "buffer.db.sparkplug-bdseq").read_text() == "2\n"
        check_seq_order(host.messages)
        assert_births_before_data(host)
        all_seqs_arrived(host, cfg)
    finally:
        host.close()


def test_outage_backlog_goes_out_historical_with_nothing_lost(
        tmp_path: Path, kept: Mosquitto, gateways: list[GatewayProcess]) -> None:
    """Readings taken while the broker is down arrive after the births with
    `is_historical`; every seq arrives (the host de-duplicates by the `seq` property)."""
    g = group()
    host = Host(kept.port, g, persistent=True)
    cfg = config(tmp_path, kept.port, g)
    try:
        gw = start(cfg, gateways)
        assert host.wait(lambda h: len(h.of("DDATA")) >= 3, 30), gw.output()[-2000:]
        live = host.seqs()
        kept.stop()
        time.sleep(2.0)  # readings pile up in the buffer
        kept.start()
        host.subscribed()
        assert host.wait(lambda h: len(h.of("NBIRTH")) >= 2, 30), gw.output()[-2000:]
        assert host.wait(lambda h: any(r["historical"] for r in h.readings()), 20)
        assert gw.stop() == 0
        all_seqs_arrived(host, cfg)
        # what was taken during the outage came after the new session's births, flagged
        after = host.messages.index([m for m in host.messages if m.kind == "NBIRTH"][1])
        historical: set[int] = set()
        names = {metric.alias: metric.name for m in host.of("DBIRTH")
                 for metric in m.payload.metrics}
        for m in host.messages[after:]:
            if m.kind == "DDATA":
                historical |= {int(codec.properties(metric)["seq"])
                               for metric in m.payload.metrics
                               if metric.is_historical and metric.alias in names}
        assert len(historical - live) >= 40  # 2 devices x 4 points x 20/s x ~2 s, at least
        check_seq_order(host.messages)
        assert_births_before_data(host)
    finally:
        host.close()


def test_primary_host_gates_births_and_data(tmp_path: Path, broker: Mosquitto,
                                            gateways: list[GatewayProcess]) -> None:
    """With primary_host set nothing but the subscription happens until STATE says online;
    then NBIRTH, DBIRTHs and the buffered readings (historical) follow; offline stops data."""
    g = group()
    scada = f"scada-{g}"
    host = Host(broker.port, g)
    cfg = config(tmp_path, broker.port, g, primary_host=scada)
    try:
        gw = start(cfg, gateways)
        assert not host.wait(lambda h: len(h.messages) > 0, 3)  # waiting for the host
        host.state(scada, online=True)
        assert host.wait(lambda h: len(h.of("DDATA")) >= 3, 20), gw.output()[-2000:]
        assert host.messages[0].kind == "NBIRTH"
        assert any(r["historical"] for r in host.readings())  # buffered while waiting
        host.state(scada, online=False)
        host.wait(lambda h: False, 1.0)  # in flight before offline was seen
        seen = len(host.of("DDATA"))
        assert not host.wait(lambda h: len(h.of("DDATA")) > seen, 2.0)
        host.state(scada, online=True)
        assert host.wait(lambda h: len(h.of("DDATA")) > seen, 20)
        assert gw.stop() == 0
        all_seqs_arrived(host, cfg)
        check_seq_order(host.messages)
        assert_births_before_data(host)
    finally:
        host.send(f"spBv1.0/STATE/{scada}", b"", retain=True)  # clear the retained STATE
        host.close()


def test_kill9_at_random_moments_loses_nothing_and_never_reuses_a_bdseq(
        tmp_path: Path, broker: Mosquitto, gateways: list[GatewayProcess]) -> None:
    """SIGKILL the agent 4 times mid-flow (as tests/core/test_kill9.py does for the native
    dialect): every seq arrives, each session's NBIRTH has a new bdSeq, and each will
    NDEATH carries the bdSeq of the session it ends."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"sparkplug kill9 seed={seed}")
    g = group()
    host = Host(broker.port, g)
    cfg = config(tmp_path, broker.port, g)
    try:
        for i in range(4):
            births = len(bdseqs(host, "NBIRTH"))
            gw = start(cfg, gateways)
            assert host.wait(lambda h, n=births: len(bdseqs(h, "NBIRTH")) > n, 30), \
                gw.output()[-2000:]
            time.sleep(rng.uniform(0.0, 1.0) if i % 2 else rng.uniform(0.3, 1.5))
            gw.kill()
            assert host.wait(lambda h, n=i: len(bdseqs(h, "NDEATH")) > n, 10)
        gw = start(cfg, gateways)
        assert host.wait(lambda h: len(bdseqs(h, "NBIRTH")) == 5, 30), gw.output()[-2000:]
        time.sleep(0.5)
        assert gw.stop() == 0
        births, deaths = bdseqs(host, "NBIRTH"), bdseqs(host, "NDEATH")
        assert births == [0, 1, 2, 3, 4], seed
        assert deaths == [0, 1, 2, 3, 4], seed  # four wills and the clean stop's NDEATH
        check_seq_order(host.messages)
        assert_births_before_data(host)
        all_seqs_arrived(host, cfg)
    finally:
        host.close()

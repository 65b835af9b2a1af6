"""Bad input to a running ingest: kept in the rejected table, acknowledged, the rest goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho

from tests.ingest.conftest import IngestProcess, Pg, ingest_config
from tests.support import Mosquitto, scrape, wait_metric


def reading(seq: int, value: object = 1.0, device: str = "d") -> dict[str, object]:
    return {"seq": seq, "device": device, "metric": "m", "value": value, "unit": None,
            "ts": 1764345600000 + seq, "quality": "good"}


def test_what_postgresql_or_the_parser_refuses_is_kept_aside(
        tmp_path: Path, pg: Pg, broker: Mosquitto, ingests: list[IngestProcess]) -> None:
    path, listen = ingest_config(tmp_path, pg, [broker.url])
    ingests.append(IngestProcess(path, "a").start())
    wait_metric(listen, f'parkgate_ingest_broker_connected{{broker="{broker.url}"}}',
                lambda v: v == 1, timeout=30)
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def send(*readings: dict[str, object]) -> None:
        doc = {"v": 1, "gateway": "gw", "site": "s", "readings": list(readings)}
        pub.publish("parkgate/s/gw/d", json.dumps(doc), qos=1).wait_for_publish(5)

    send(reading(1), reading(2))
    send(reading(3, "text with a NUL \u0000 inside"))   # PostgreSQL text cannot hold NUL
    send(reading(4, device="dev\u0000ice"), {"seq": "five"})
    pub.publish("parkgate/s/gw/d", b"\xff not json", qos=1).wait_for_publish(5)
    pub.publish("parkgate/s/gw/status", b'{"state":"online","gateway":"gw"}',
                qos=1).wait_for_publish(5)
    time.sleep(0.2)
    send(reading(6))
    pub.loop_stop()
    pub.disconnect()
    wait_metric(listen, 'parkgate_ingest_last_seq{gateway="gw"}', lambda v: v == 6, timeout=20)
    assert [s for (s,) in pg.query("SELECT seq FROM {s}.readings ORDER BY seq")] == [1, 2, 6]
    rejected = pg.query("SELECT reason FROM {s}.readings_rejected ORDER BY id")
    reasons = sorted(r for (r,) in rejected)
    # readings 3 and 4 each take their whole message aside (raw payload kept); the parser's
    # refusal of {"seq": "five"} travels with message 4
    assert reasons == ["database refused: PostgreSQL text fields cannot contain NUL (0x00) "
                       "bytes"] * 2 + ["not UTF-8 JSON"], reasons
    metrics = scrape(listen)
    assert metrics['parkgate_ingest_gateway_online{gateway="gw"}'] == 1
    assert ingests[0].alive()
    assert metrics["parkgate_ingest_unacked_messages"] == 0

"""Ingest benchmark: sustained readings/s from Mosquitto into PostgreSQL, 1 and 2 processes.

The broker is loaded first, while the ingest processes are away (their persistent sessions
queue their turns of the shared subscription), so the publisher does not compete for the
two cores; then the processes start and the clock runs from the first committed row to the
last. Prints rows/s, CPU seconds of the ingest processes per 100k rows, and PostgreSQL's
own CPU (its backends) per 100k rows.

    .venv/bin/python bench/ingest.py [--readings 300000] [--batch 500] [--gateways 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procfs import cpu_seconds, terminate  # noqa: E402

from tests.support import Mosquitto, free_port, wait_metric, write_config  # noqa: E402

DSN = os.environ.get("PARKGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_backend_cpu() -> float:
    """utime+stime of every postgres process (the server's share of the work)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(pid))
            except (OSError, ValueError):
                continue
    return total


def publish(port: int, readings: int, batch: int, gateways: int) -> None:
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    ts = int(time.time() * 1000)
    seq = dict.fromkeys(range(gateways), 1)
    infos = []
    for i in range(readings // batch):
        g = i % gateways
        items = [{"seq": seq[g] + k, "device": f"meter-{k % 20}", "metric": "voltage_l1",
                  "value": 230.0 + k / 10, "unit": "V", "ts": ts + k, "quality": "good"}
                 for k in range(batch)]
        seq[g] += batch
        body = json.dumps({"v": 1, "gateway": f"gw-{g}", "site": "bench", "readings": items})
        infos.append(pub.publish(f"parkgate/bench/gw-{g}/meters", body, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    pub.loop_stop()
    pub.disconnect()


def run(processes: int, readings: int, batch: int, gateways: int, tmp: Path) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    broker = Mosquitto().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        listens = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
        cfgs = [write_config(tmp / f"ingest-{processes}-{i}.yaml", {
            "source": {"brokers": [broker.url], "share": "bench", "client_id": schema,
                       "receive_maximum": 200},
            "sink": {"postgres": DSN, "schema": schema, "timescale": False,
                     "batch_rows": 10000, "batch_delay": "100ms"},
            "gaps": {"interval": "5s"},
            "metrics": {"listen": listens[i]},
            "logging": {"level": "warning", "format": "json"}}) for i in range(processes)]

        def start(i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen([sys.executable, "-m", "gateway", "ingest", "-c",
                                     str(cfgs[i]), "--instance", str(i)], cwd=ROOT)

        # create the schema and each process's session, then stop them: the broker queues
        procs = [start(i) for i in range(processes)]
        for listen in listens:
            wait_metric(listen, f'parkgate_ingest_broker_connected{{broker="{broker.url}"}}',
                        lambda v: v == 1, timeout=120)
        for p in procs:
            terminate(p)
        publish(broker.port, readings, batch, gateways)
        with psycopg.connect(DSN, autocommit=True) as conn:
            pg0 = pg_backend_cpu()
            procs = [start(i) for i in range(processes)]
            first = last = None
            cpu0 = 0.0
            count = 0
            deadline = time.monotonic() + 600
            while count < readings and time.monotonic() < deadline:
                count = conn.execute(f'SELECT count(*) FROM "{schema}".readings').fetchone()[0]
                now = time.monotonic()
                if count and first is None:  # CPU from here: start-up is not throughput
                    first = (now, count)
                    cpu0 = sum(cpu_seconds(p.pid) for p in procs)
                    pg0 = pg_backend_cpu()
                time.sleep(0.2)
            last = (time.monotonic(), count)
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
            pg_cpu = pg_backend_cpu() - pg0
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        assert first is not None, "no row arrived"
        assert count == readings, (count, readings)
        rows = last[1] - first[1]
        return {"processes": processes, "rows_per_s": rows / (last[0] - first[0]),
                "ingest_cpu_s_per_100k": cpu / rows * 100_000,
                "postgres_cpu_s_per_100k": pg_cpu / rows * 100_000}
    finally:
        for p in procs:
            terminate(p)
        broker.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=500, help="readings per MQTT message")
    ap.add_argument("--gateways", type=int, default=10)
    args = ap.parse_args()
    print(f"{args.readings} readings in messages of {args.batch}, {args.gateways} gateways, "
          f"{os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2):
            r = run(n, args.readings, args.batch, args.gateways, Path(d))
            print(f"{n} ingest process(es): {r['rows_per_s']:,.0f} rows/s sustained, "
                  f"ingest CPU {r['ingest_cpu_s_per_100k']:.2f} s per 100k rows, "
                  f"PostgreSQL CPU {r['postgres_cpu_s_per_100k']:.2f} s per 100k rows")


if __name__ == "__main__":
    main()

"""monitoring/grafana-ingest.json and ingest-alerts.yml against a real ingest: every
PromQL name is exported, every SQL query runs on the tables the ingest creates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid

import paho.mqtt.client as paho
import pytest
import yaml

from tests.ingest.conftest import PG_DSN, IngestProcess, Pg, ingest_config
from tests.ops.test_monitoring import promql_metric_names
from tests.support import ROOT, Mosquitto

# one xdist worker runs this module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("ingest-monitoring")
MON = ROOT / "monitoring"
DASHBOARD = json.loads((MON / "grafana-ingest.json").read_text())
promtool = shutil.which("promtool")


def grafana_sql(q: str, table: str) -> str:
    """What Grafana's PostgreSQL data source sends, for fixed variables and a 6 h range."""
    q = q.replace("${table}", table).replace("$table", table)
    q = re.sub(r"\$__timeGroupAlias\((\w+), [^)]*\)",
               r"date_bin('1 minute', \1, timestamptz 'epoch') AS time", q)
    q = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 BETWEEN now() - interval '6 hours' AND now()", q)
    for var in ("site", "device", "metric"):
        q = q.replace(f"(${var})", f"(SELECT {var} FROM {table})")
    assert "$" not in q, q
    return q


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A running ingest's /metrics after it stored a batch (module-wide: one process)."""
    tmp = tmp_path_factory.mktemp("mon")
    # unique: xdist workers may each build this fixture in the same second
    pg = Pg(PG_DSN, f"pgtest_mon_{uuid.uuid4().hex[:12]}")
    broker = Mosquitto().start()
    path, listen = ingest_config(tmp, pg, [broker.url])
    proc = IngestProcess(path, "m").start()
    try:
        deadline = time.monotonic() + 30
        text = ""
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        seq = 1
        while time.monotonic() < deadline and "parkgate_ingest_last_seq{" not in text:
            body = {"v": 1, "gateway": "gw", "site": "s", "readings": [
                {"seq": seq, "device": "d", "metric": "m", "value": 1.5, "unit": "V",
                 "ts": int(time.time() * 1000), "quality": "good"}]}
            pub.publish("parkgate/s/gw/d", json.dumps(body), qos=1)
            pub.publish("parkgate/s/gw/status", b'{"state":"online","gateway":"gw"}', qos=1)
            seq += 1
            time.sleep(0.3)
            try:
                with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except OSError:
                text = ""
        pub.loop_stop()
        pub.disconnect()
        assert "parkgate_ingest_last_seq{" in text, proc.output()[-3000:]
        tables = pg.query("SELECT table_name FROM information_schema.tables"
                          " WHERE table_schema = %s", pg.schema)
        yield text, pg, [t for (t,) in tables]
    finally:
        proc.kill()
        broker.close()
        pg.query('DROP SCHEMA IF EXISTS "{s}" CASCADE')


def test_exposition_passes_promtool(exposition: tuple[str, Pg, list[str]]) -> None:
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    res = subprocess.run([promtool, "check", "metrics"], input=exposition[0],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_and_alerts_use_only_exported_names(
        exposition: tuple[str, Pg, list[str]]) -> None:
    exported = {line.split("{")[0].split(" ")[0] for line in exposition[0].splitlines()
                if line and not line.startswith("#")}
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])
             if "expr" in t]
    rules = yaml.safe_load((MON / "ingest-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names and names <= exported, (expr, names - exported)


def test_dashboard_sql_runs_on_the_ingest_tables(exposition: tuple[str, Pg, list[str]]) -> None:
    _, pg, _ = exposition
    table = f"{pg.schema}.readings"  # what an operator types into the `table` box
    queries = [t["rawSql"] for p in DASHBOARD["panels"] for t in p.get("targets", [])
               if "rawSql" in t]
    queries += [v["query"] for v in DASHBOARD["templating"]["list"]
                if v.get("datasource", {}).get("type") == "grafana-postgresql-datasource"]
    assert len(queries) >= 6
    for q in queries:
        pg.query(grafana_sql(q, table))  # ${table}_dropped: a suffix to the variable's text


@pytest.mark.skipif(promtool is None, reason="promtool not installed")
def test_alert_rules_and_their_unit_tests() -> None:
    assert promtool
    for args in (["check", "rules", "ingest-alerts.yml"],
                 ["test", "rules", "ingest-alerts_test.yml"]):
        res = subprocess.run([promtool, *args], cwd=MON, capture_output=True, text=True,
                             timeout=60, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


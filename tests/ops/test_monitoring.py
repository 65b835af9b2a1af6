"""monitoring/: alert rules pass promtool's own checks and unit tests; the scrape config is
valid; every metric named by a dashboard panel or an alert is one a running gateway
really exports (scraped from `parkgate run` with a sim device and an emulated modem)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT, GatewayProcess, Mosquitto, base_config, write_config

# one xdist worker runs this module: its module-scoped fixture is built once
pytestmark = pytest.mark.xdist_group("ops-monitoring")
MON = ROOT / "monitoring"
DASHBOARD = MON / "grafana-dashboard.json"
ALERTS = MON / "alerts.yml"
promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed (apt-get install prometheus)")

# Names Prometheus itself makes, not the gateway.
PROMETHEUS_NAMES = {"up"}
# The modem driver's gauges (drivers/modem/driver.py). They are checked against the real
# scrape whenever the Quectel emulator is there to give the gateway a modem; this list is
# the documented fallback when it is not.
MODEM_NAMES = {"parkgate_modem_signal_rsrp_dbm", "parkgate_modem_signal_rsrq_db",
               "parkgate_modem_signal_sinr_db", "parkgate_modem_signal_rssi_dbm",
               "parkgate_modem_temperature_celsius", "parkgate_modem_registered"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
    "or", "unless", "inf", "nan",
    # aggregation operators, which may stand before `by (...)` instead of `(`
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords and labels left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS:
            continue   # a function or aggregation, or a keyword
        names.add(word)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard, variables included."""
    doc = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            assert inner, q
            out.append((f"variable {v['name']}", inner.group(1)))
    return out


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def grafana_to_promql(expr: str) -> str:
    """Substitute Grafana's variables so promtool can parse the expression."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    return re.sub(r"\$(\w+)", "x", expr)


def exported_names(text: str) -> set[str]:
    """Every sample name an exposition can contain, from its samples and TYPE lines."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def scrape(listen: str) -> str:
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        return str(r.read().decode())


# --- the parser is only as good as its tests ------------------------------------------

def test_promql_metric_names_parser() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (device, le) (rate(parkgate_poll_duration_seconds_bucket'
        '{gateway="$gateway"}[$__rate_interval])))') == {"parkgate_poll_duration_seconds_bucket"}
    assert promql_metric_names(
        "parkgate_buffer_oldest_age_seconds > 900 and deriv(parkgate_buffer_readings[15m]) > 0"
    ) == {"parkgate_buffer_oldest_age_seconds", "parkgate_buffer_readings"}
    assert promql_metric_names('up{job="parkgate", site=~"a|b"} == 0') == {"up"}
    assert promql_metric_names("time() - parkgate_device_last_success_timestamp_seconds") == {
        "parkgate_device_last_success_timestamp_seconds"}
    assert promql_metric_names('max by (gateway, site, version) (parkgate_build_info{s="x"})') \
        == {"parkgate_build_info"}


# --- promtool --------------------------------------------------------------------------

@needs_promtool
def test_alert_rules_check() -> None:
    assert promtool
    res = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in res.stdout


@needs_promtool
def test_alert_rules_unit_tests() -> None:
    assert promtool
    res = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=MON,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout
    # every alert has at least one test case
    tested = set(re.findall(r"alertname: (\w+)", (MON / "alerts_test.yml").read_text()))
    assert tested == {name for name, _ in alert_exprs()}


@needs_promtool
def test_alert_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """Loosen one threshold: promtool's tests must fail, so they are not vacuous."""
    assert promtool
    broken = ALERTS.read_text().replace("parkgate_device_up == 0", "parkgate_device_up < 2")
    assert broken != ALERTS.read_text()
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(MON / "alerts_test.yml", tmp_path / "alerts_test.yml")
    res = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    assert "ParkgateDeviceDown" in res.stdout + res.stderr


@needs_promtool
def test_scrape_config_check() -> None:
    assert promtool
    res = subprocess.run([promtool, "check", "config", str(MON / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each panel query, variables substituted, parsed by promtool as a recording rule."""
    assert promtool
    exprs = dashboard_exprs()
    assert len(exprs) >= 40
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)}
        for i, (_title, e) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dashboard_shape() -> None:
    doc = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in doc["panels"]]
    for row in ("Fleet", "Gateway $gateway: devices", "Gateway $gateway: buffer",
                "Gateway $gateway: uplink", "Gateway $gateway: 5G/LTE modem",
                "Gateway $gateway: commands"):
        assert row in titles
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in doc["templating"]["list"]}
    assert names == {"datasource", "site", "gateway"}
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"], p["title"]
    # the gateway section really is per gateway
    for title, expr in dashboard_exprs():
        if title.startswith("variable"):
            continue
        assert 'gateway="$gateway"' in expr or 'site=~"$site"' in expr, (title, expr)


# --- names against a real scrape ------------------------------------------------------

@pytest.fixture(scope="module")
def exposition(ops_broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[str, bool]]:
    """The /metrics text of a running gateway with a failing sim device and, when the
    Quectel emulator exists, a modem on its AT port. Yields (text, modem_was_running)."""
    tmp = tmp_path_factory.mktemp("scrape")
    devices: list[dict[str, Any]] = [
        {"name": "sim-1", "driver": "sim", "interval": "100ms", "points": 2, "fail_every": 3}]
    emulator = ROOT / "hardware-in-loop" / "emulators" / "quectel_modem.py"
    modem: subprocess.Popen[str] | None = None
    if emulator.exists():
        link = tmp / "ttyMODEM"
        modem = subprocess.Popen([sys.executable, str(emulator), "--mode", "nsa",
                                  "--link", str(link)], stdout=subprocess.PIPE, text=True)
        assert modem.stdout is not None
        modem.stdout.readline()   # the port path: the emulator is up
        devices.append({"name": "modem", "driver": "modem", "source": "at",
                        "port": str(link), "interval": "1s", "command_timeout": "1s"})
    cfg = base_config(tmp, ops_broker.port, devices)
    gw = GatewayProcess(write_config(tmp / "gw.yaml", cfg)).start()
    try:
        listen = cfg["metrics"]["listen"]
        text = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                text = scrape(listen)
            except OSError:
                text = ""
            if ("parkgate_poll_errors_total{" in text and "parkgate_uplink_connected 1.0" in text
                    and (modem is None or "parkgate_modem_signal_sinr_db{" in text)):
                break
            time.sleep(0.2)
        assert "parkgate_poll_errors_total{" in text, gw.output()[-3000:]
        if modem is not None:
            assert "parkgate_modem_signal_sinr_db{" in text, gw.output()[-3000:]
        yield text, modem is not None
    finally:
        gw.kill()
        if modem is not None:
            modem.terminate()
            modem.wait(10)
            assert modem.stdout is not None
            modem.stdout.close()


def test_exposition_passes_promtool_check_metrics(exposition: tuple[str, bool]) -> None:
    if promtool is None:
        pytest.skip("promtool not installed")
    text, _ = exposition
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_name_is_really_exported(exposition: tuple[str, bool], source: str) -> None:
    text, modem_ran = exposition
    exported = exported_names(text)
    allowed = exported | PROMETHEUS_NAMES
    if modem_ran:
        assert exported >= MODEM_NAMES, MODEM_NAMES - exported   # the allow-list is true
    else:
        allowed |= MODEM_NAMES
    exprs = dashboard_exprs() if source == "dashboard" else alert_exprs()
    used: set[str] = set()
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        unknown = names - allowed
        assert not unknown, f"{title}: {sorted(unknown)} not exported by parkgate"
        used |= names
    if source == "dashboard":
        # the dashboard shows every stage the issue asks for
        assert {"parkgate_device_up", "parkgate_poll_errors_total",
                "parkgate_poll_duration_seconds_bucket", "parkgate_buffer_readings",
                "parkgate_buffer_oldest_age_seconds", "parkgate_buffer_dropped_total",
                "parkgate_uplink_connected", "parkgate_uplink_publish_latency_seconds_bucket",
                "parkgate_modem_signal_rsrp_dbm", "parkgate_commands_total"} <= used

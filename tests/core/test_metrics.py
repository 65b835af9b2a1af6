"""A real agent scraped over HTTP: contract metric names, promtool, health endpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import Collector, GatewayProcess, Mosquitto, base_config, write_config

CONTRACT = [  # ../shared/design/interfaces.md, "Metrics"
    "parkgate_readings_total", "parkgate_poll_errors_total",
    "parkgate_poll_duration_seconds_bucket", "parkgate_device_up",
    "parkgate_device_last_success_timestamp_seconds", "parkgate_buffer_readings",
    "parkgate_buffer_bytes", "parkgate_buffer_oldest_age_seconds",
    "parkgate_buffer_dropped_total", "parkgate_uplink_connected",
    "parkgate_uplink_published_readings_total", "parkgate_uplink_reconnects_total",
    "parkgate_uplink_publish_latency_seconds_bucket",
    "parkgate_config_reload_failures_total", "parkgate_build_info",
]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def test_scrape_contract_promtool_and_health(tmp_path: Path, shared_broker: Mosquitto) -> None:
    devices = [{"name": "s1", "driver": "sim", "interval": "50ms", "points": 3},
               {"name": "flaky", "driver": "sim", "interval": "50ms", "fail_every": 2}]
    cfg = base_config(tmp_path, shared_broker.port, devices)
    cfg["buffer"]["max_bytes"] = "64KiB"
    path = write_config(tmp_path / "c.yaml", cfg)
    listen = cfg["metrics"]["listen"]
    collector = Collector(shared_broker.port, "parkgate/test/test-gw/#")
    gw = GatewayProcess(path).start()
    try:
        wait_http(f"http://{listen}/metrics")
        assert collector.wait_for(lambda c: len(c.readings()) >= 30), gw.output()
        time.sleep(1.5)  # a couple of gauge refreshes
        status, text = get(f"http://{listen}/metrics")
        assert status == 200
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                 if line and not line.startswith("#")}
        missing = [n for n in CONTRACT if n not in names]
        assert not missing, missing
        values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if line and not line.startswith("#")}
        assert values['parkgate_device_up{device="s1"}'] == 1
        assert values['parkgate_readings_total{device="s1"}'] >= 30
        assert values['parkgate_poll_errors_total{device="flaky",kind="simulated"}'] >= 1
        assert values["parkgate_uplink_connected"] == 1
        assert values["parkgate_uplink_published_readings_total"] >= 30
        assert values['parkgate_build_info{version="0.1.0"}'] == 1
        # series that alerts watch exist at 0 before the first event
        assert values['parkgate_buffer_dropped_total{reason="too_large"}'] == 0
        for evidence in ("reason_code", "quick_losses"):
            key = f'parkgate_uplink_session_takeovers_total{{evidence="{evidence}"}}'
            assert values[key] == 0

        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.fail("promtool is missing: scripts/test.sh installs Debian's prometheus")
        lint = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                              capture_output=True, timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        status, body = get(f"http://{listen}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = get(f"http://{listen}/readyz")
        ready = json.loads(body)
        assert status == 200 and ready["buffer_open"] and ready["uplink_connected"]
        assert get(f"http://{listen}/nope")[0] == 404
    finally:
        assert gw.stop() == 0
        collector.close()


def test_readyz_stays_ready_while_uplink_is_down(tmp_path: Path) -> None:
    broker = Mosquitto()  # never started: the port refuses connections
    cfg = base_config(tmp_path, broker.port, [{"name": "s", "driver": "sim",
                                               "interval": "100ms"}])
    listen = cfg["metrics"]["listen"]
    gw = GatewayProcess(write_config(tmp_path / "c.yaml", cfg)).start()
    try:
        wait_http(f"http://{listen}/readyz")
        time.sleep(1.0)
        status, body = get(f"http://{listen}/readyz")
        doc = json.loads(body)
        assert status == 200, body
        assert doc["uplink_connected"] is False
        assert "Connection refused" in (doc["uplink_last_error"] or "")
        _, text = get(f"http://{listen}/metrics")
        assert "parkgate_uplink_connected 0.0" in text
    finally:
        assert gw.stop() == 0
        broker.close()

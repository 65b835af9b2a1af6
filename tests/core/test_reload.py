"""SIGHUP hot reload: only changed devices restart, the uplink stays, bad files are refused."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.support import (
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    buffer_stats,
    scrape,
    wait_metric,
    wait_subscribed,
    write_config,
)


def sim(name: str, points: int = 2, interval: str = "100ms") -> dict[str, Any]:
    """A counter sim device: every reading's value is the poll number."""
    return {"name": name, "driver": "sim", "interval": interval, "points": points,
            "pattern": "counter"}


def values(readings: list[dict[str, Any]], device: str, metric: str = "p0") -> list[Any]:
    """A device's values of one metric in seq order."""
    return [r["value"] for r in sorted({r["seq"]: r for r in readings}.values(),
                                       key=lambda r: r["seq"])
            if r["device"] == device and r["metric"] == metric]


def polls(c: Collector, device: str, metric: str = "p0") -> int:
    """Readings of one device metric seen; safe inside `wait_for` predicates."""
    return sum(1 for _t, m in c.messages for r in m["readings"]
               if r["device"] == device and r["metric"] == metric)


def stop_and_check(gw: GatewayProcess, cfg: Path, c: Collector) -> list[dict[str, Any]]:
    """SIGTERM; exit 0, buffer empty, every seq 1..last delivered; returns the readings."""
    assert gw.stop() == 0, gw.output()[-3000:]
    stats = buffer_stats(cfg)
    assert stats["rows"] == 0, stats
    want = set(range(1, stats["next_seq"]))
    deadline = time.monotonic() + 20
    while not want <= set(c.seqs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    missing = sorted(want - set(c.seqs()))
    assert not missing, f"{len(missing)} seqs missing, first {missing[:10]}"
    return c.readings()


def test_sighup_applies_device_changes_only(tmp_path: Path, broker: Mosquitto,
                                            collector: Collector,
                                            gateways: list[GatewayProcess]) -> None:
    """Add one device, change one, keep one: only the changed one restarts.

    The new file also changes `uplink:`, which needs a restart: the agent says so and keeps
    its connection."""
    wait_subscribed(collector, broker.port)
    base = base_config(tmp_path, broker.port, [sim("keep"), sim("change")])
    listen = base["metrics"]["listen"]
    cfg = write_config(tmp_path / "gw.yaml", base)
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: polls(c, "keep") >= 5 and polls(c, "change") >= 5,
                              20), gw.output()[-3000:]
    before = scrape(listen)

    uplink = json.loads(json.dumps(base["uplink"]))
    uplink["mqtt"]["batch"]["max_delay"] = "200ms"
    write_config(cfg, {**base, "uplink": uplink,
                       "devices": [sim("keep"), sim("change", points=3), sim("new")]})
    gw.signal(signal.SIGHUP)
    wait_metric(listen, "parkgate_config_reloads_total", lambda v: v == 1, 10)
    assert collector.wait_for(lambda c: polls(c, "new") >= 5 and polls(c, "change", "p2") >= 5,
                              20), gw.output()[-3000:]
    after = scrape(listen)
    assert after["parkgate_uplink_reconnects_total"] == before[
        "parkgate_uplink_reconnects_total"] == 0
    assert after["parkgate_uplink_connected"] == 1
    assert after["parkgate_config_reload_failures_total"] == 0
    out = gw.output()
    assert out.count('"event": "uplink connected"') == 1
    reloaded = [json.loads(line) for line in out.splitlines()
                if '"event": "config reloaded"' in line]
    assert len(reloaded) == 1
    assert reloaded[0]["restarted"] == ["change"]
    assert reloaded[0]["started"] == ["new"]
    assert reloaded[0]["stopped"] == []
    ignored = [json.loads(line) for line in out.splitlines() if "need a restart" in line]
    assert [w["sections"] for w in ignored] == [["uplink"]]

    readings = stop_and_check(gw, cfg, collector)
    keep = values(readings, "keep")
    assert keep == list(range(1, len(keep) + 1)), "the unchanged device restarted"
    change = values(readings, "change")
    restart = change.index(1, 1)  # its counter started over once
    assert change[:restart] == list(range(1, restart + 1))
    assert change[restart:] == list(range(1, len(change) - restart + 1))
    assert values(readings, "change", "p2")[0] == 1  # the new point exists from the restart
    new = values(readings, "new")
    assert new == list(range(1, len(new) + 1))
    assert len(new) >= 5


def test_sighup_with_invalid_config_keeps_running(tmp_path: Path, broker: Mosquitto,
                                                  collector: Collector,
                                                  gateways: list[GatewayProcess]) -> None:
    """A file with an unknown key: refused with FILE:LINE:COL, old devices keep running."""
    wait_subscribed(collector, broker.port)
    base = base_config(tmp_path, broker.port, [sim("keep"), sim("other")])
    listen = base["metrics"]["listen"]
    cfg = write_config(tmp_path / "gw.yaml", base)
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: polls(c, "keep") >= 3, 20), gw.output()[-3000:]

    broken = {**sim("other", points=5), "pointz": 3}
    write_config(cfg, {**base, "devices": [sim("keep"), broken]})
    lines = cfg.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "pointz:" in text)
    col = lines[line - 1].index("pointz") + 1
    gw.signal(signal.SIGHUP)
    wait_metric(listen, "parkgate_config_reload_failures_total", lambda v: v == 1, 10)
    seen = {d: polls(collector, d) for d in ("keep", "other")}
    assert collector.wait_for(
        lambda c: all(polls(c, d) >= n + 5 for d, n in seen.items()), 20), gw.output()[-3000:]
    metrics = scrape(listen)
    assert metrics["parkgate_config_reloads_total"] == 0
    assert metrics["parkgate_uplink_reconnects_total"] == 0
    assert gw.alive()
    out = gw.output()
    assert f"{cfg}:{line}:{col}: devices.1.pointz: unknown key 'pointz'" in out, out[-3000:]
    assert "keeping the running config" in out

    # the file fixed, the next SIGHUP applies it
    write_config(cfg, {**base, "devices": [sim("keep"), sim("other", points=5)]})
    gw.signal(signal.SIGHUP)
    wait_metric(listen, "parkgate_config_reloads_total", lambda v: v == 1, 10)
    assert collector.wait_for(lambda c: polls(c, "other", "p4") >= 3, 20)
    readings = stop_and_check(gw, cfg, collector)
    keep = values(readings, "keep")
    assert keep == list(range(1, len(keep) + 1))
    other = values(readings, "other")
    assert other.count(1) == 2  # restarted once: by the valid reload, not the invalid one


def test_sighup_with_an_undecodable_secret_keeps_running(tmp_path: Path, broker: Mosquitto,
                                                         collector: Collector,
                                                         gateways: list[GatewayProcess]
                                                         ) -> None:
    """Issue 10 #1: a `${file:...}` secret turned non-UTF-8, then SIGHUP.

    The reload is refused with FILE:LINE:COL and counted, the devices keep delivering; a
    fresh start on the same file exits 2 (a config problem), not 1 (a crash systemd would
    restart in a loop)."""
    wait_subscribed(collector, broker.port)
    secret = tmp_path / "mqtt-user"
    secret.write_text("gw-user\n")
    base = base_config(tmp_path, broker.port, [sim("keep")])
    base["uplink"]["mqtt"]["username"] = f"${{file:{secret}}}"
    listen = base["metrics"]["listen"]
    cfg = write_config(tmp_path / "gw.yaml", base)
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: polls(c, "keep") >= 3, 20), gw.output()[-3000:]

    secret.write_bytes(b"gw-\xff\xfeuser\n")
    lines = cfg.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "username:" in text)
    col = lines[line - 1].index("${file:") + 1
    gw.signal(signal.SIGHUP)
    wait_metric(listen, "parkgate_config_reload_failures_total", lambda v: v == 1, 10)
    seen = polls(collector, "keep")
    assert collector.wait_for(lambda c: polls(c, "keep") >= seen + 5, 20), gw.output()[-3000:]
    assert gw.alive(), gw.output()[-3000:]
    out = gw.output()
    assert (f"{cfg}:{line}:{col}: uplink.mqtt.username: secret file {secret} is not UTF-8 "
            "text (byte 0xff at offset 3)") in out, out[-3000:]
    assert "keeping the running config" in out
    assert "Traceback" not in out and "ExceptionGroup" not in out
    secret.write_text("gw-user\n")  # `buffer stats` reads the config too
    stop_and_check(gw, cfg, collector)

    secret.write_bytes(b"gw-\xff\xfeuser\n")
    fresh = GatewayProcess(cfg).start()
    gateways.append(fresh)
    assert fresh.proc is not None
    assert fresh.proc.wait(30) == 2, fresh.output()[-3000:]
    assert f"{cfg}:{line}:{col}: uplink.mqtt.username: secret file" in fresh.output()
    assert "Traceback" not in fresh.output()


def test_sighup_masks_new_secrets_when_logging_is_unchanged(tmp_path: Path, broker: Mosquitto,
                                                            collector: Collector,
                                                            gateways: list[GatewayProcess]
                                                            ) -> None:
    """Issue 10, also seen: a value substituted by the reloaded file is masked in the log
    from the first line, though the `logging:` section stayed the same."""
    wait_subscribed(collector, broker.port)
    name_file = tmp_path / "device-name"
    name_file.write_text("meter-hunter2-secret\n")
    base = base_config(tmp_path, broker.port, [sim("keep")])
    listen = base["metrics"]["listen"]
    cfg = write_config(tmp_path / "gw.yaml", base)
    gw = GatewayProcess(cfg).start()
    gateways.append(gw)
    assert collector.wait_for(lambda c: polls(c, "keep") >= 3, 20), gw.output()[-3000:]

    write_config(cfg, {**base, "devices": [sim("keep"), sim(f"${{file:{name_file}}}")]})
    gw.signal(signal.SIGHUP)
    wait_metric(listen, "parkgate_config_reloads_total", lambda v: v == 1, 10)
    assert collector.wait_for(lambda c: polls(c, "meter-hunter2-secret") >= 3, 20)
    out = gw.output()
    reloaded = [json.loads(line) for line in out.splitlines()
                if '"event": "config reloaded"' in line]
    assert len(reloaded) == 1, out[-3000:]
    assert reloaded[0]["started"] == ["***"]
    assert "hunter2" not in out, out[-3000:]
    stop_and_check(gw, cfg, collector)

"""Config loading: every problem at once, with file, line, column, path and a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigProblems, json_schema, load_config, parse_config
from gateway.units import format_duration, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
gateway: {id: gw1, site: park}
buffer: {path: /tmp/x.db, max_bytes: 64MiB}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:1883", "mqtts://b.example:8883"]
    password: ${PG_TEST_PW}
devices:
  - name: s1
    driver: sim
    interval: 250ms
"""


def problems(text: str, name: str = "c.yaml") -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        parse_config(text, Path(name))
    return [str(p) for p in info.value.problems]


def test_valid_config_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_PW", "s3cret-pw")
    loaded = parse_config(GOOD, Path("c.yaml"))
    cfg = loaded.config
    assert cfg.buffer.max_bytes == 64 * 2**20
    assert cfg.devices[0].interval == 0.25
    assert cfg.uplink.mqtt.password is not None
    assert cfg.uplink.mqtt.password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(cfg)
    assert loaded.secrets == frozenset({"s3cret-pw"})


def test_every_problem_reported_with_position(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    text = """\
gateway:
  id: gw1
  sitee: x
buffer:
  max_bytes: 12 parsecs
uplink:
  mqtt:
    brokers: ["http://x"]
    password: ${NOPE_NOT_SET}
devices:
  - name: a
    driver: sim
    pointz: 3
  - name: a
    driver: simm
  - name: b
    driver: sim
    interval: fast
"""
    assert problems(text) == [
        "c.yaml:1:1: gateway.site: required key is missing",
        "c.yaml:3:3: gateway.sitee: unknown key 'sitee' (did you mean 'site'?)",
        "c.yaml:5:14: buffer.max_bytes: '12 parsecs' is not a size: write a number and a "
        "unit, such as 64KiB, 512MiB or 2GB",
        "c.yaml:8:14: uplink.mqtt.brokers: 'http://x' is not a broker URL: write "
        "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
        "c.yaml:9:15: uplink.mqtt.password: environment variable NOPE_NOT_SET is not set",
        "c.yaml:13:5: devices.0.pointz: unknown key 'pointz' (did you mean 'points'?)",
        "c.yaml:14:11: devices.1.name: duplicate device name 'a' (also devices.0)",
        "c.yaml:15:13: devices.1.driver: unknown driver 'simm': did you mean 'sim'? "
        "installed drivers are bacnet, ble, dlt645, modbus, modem, opcua, serial, sim",
        "c.yaml:18:15: devices.2.interval: 'fast' is not a duration: write a number and a "
        "unit, such as 500ms, 5s, 2m or 1h",
    ]


def test_yaml_syntax_error_has_position() -> None:
    assert problems("a: [1, 2\nb: 3\n") == [
        "c.yaml:2:2: (yaml): YAML syntax error: while parsing a flow sequence "
        "did not find expected ',' or ']'"]


def test_unquoted_substitution_in_flow_mapping_gets_a_hint() -> None:
    out = problems("buffer: {path: ${DIR}/b.db}\n")
    assert len(out) == 1
    assert out[0].startswith("c.yaml:1:17: (yaml): YAML syntax error:")
    assert out[0].endswith('put quotes around a value that uses ${...}, as in "${NAME}")')


def test_duplicate_yaml_key() -> None:
    out = problems("gateway: {id: a, site: b}\ngateway: {id: c, site: d}\n")
    assert len(out) == 1 and out[0].startswith("c.yaml:")
    assert "duplicate" in out[0].lower()


def test_empty_and_wrong_top_level() -> None:
    assert problems("") == ["c.yaml:1:1: (top): the file is empty: start from "
                            "config/example.yaml"]
    assert problems("- 1\n- 2\n") == ["c.yaml:1:1: (top): the top level must be a mapping "
                                      "with gateway:, uplink: and devices:"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigProblems) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}:1:1: (file): file not found"


def test_secret_file_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    monkeypatch.delenv("PG_UNSET", raising=False)
    text = GOOD.replace("${PG_TEST_PW}", f"${{file:{secret}}}").replace(
        "/tmp/x.db", '"${PG_UNSET:-/tmp/default.db}"')
    cfg = parse_config(text, Path("c.yaml")).config
    assert cfg.uplink.mqtt.password is not None
    assert cfg.uplink.mqtt.password.get_secret_value() == "from-a-file"
    assert str(cfg.buffer.path) == "/tmp/default.db"
    out = problems(GOOD.replace("${PG_TEST_PW}", "${file:/nonexistent/pw}"))
    assert out == ["c.yaml:6:15: uplink.mqtt.password: cannot read secret file "
                   "/nonexistent/pw: No such file or directory"]


def test_secrets_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_TEST_SECRET_URL", "hunter2-very-secret")
    text = GOOD.replace('"mqtt://127.0.0.1:1883"', '"${PG_TEST_SECRET_URL}"').replace(
        "${PG_TEST_PW}", "x")
    out = problems(text)
    assert len(out) == 1
    assert "hunter2" not in out[0] and "***" in out[0]


def test_driver_options_errors_are_prefixed() -> None:
    text = GOOD.replace("interval: 250ms", "interval: 250ms\n    pattern: zigzag")
    out = problems(text.replace("${PG_TEST_PW}", "x"))
    assert out == ["c.yaml:11:14: devices.0.pattern: Input should be 'counter', 'sine' or "
                   "'random'"]


def test_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120
    assert parse_duration(3) == 3.0
    assert parse_size("64KiB") == 65536
    assert parse_size("2GB") == 2 * 10**9
    assert format_duration(0.25) == "250ms"
    assert format_duration(3600) == "1h"
    for bad in ("fast", "-1s", True, "5 parsecs"):
        with pytest.raises(ValueError, match=r"duration|negative"):
            parse_duration(bad)


def test_schema_has_every_driver() -> None:
    schema = json_schema()
    variants = schema["properties"]["devices"]["items"]["oneOf"]
    names = {v["$ref"].rsplit("_", 1)[1] for v in variants}
    assert {"sim", "modbus", "serial", "dlt645", "modem", "ble"} <= names
    assert schema["$defs"]["driver_sim"]["properties"]["pattern"]["enum"] == [
        "counter", "sine", "random"]
    assert "gateway" in schema["required"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_check_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw1}\nuplink: {mqtt: {brokers: []}}\n")
    done = _cli("check", str(bad))
    assert done.returncode == 2
    assert done.stdout.splitlines() == [
        f"{bad}:1:1: gateway.site: required key is missing",
        f"{bad}:2:26: uplink.mqtt.brokers: List should have at least 1 item after "
        "validation, not 0",
    ]
    assert "Traceback" not in done.stderr
    good = ROOT / "drivers" / "sim" / "sample.yaml"
    done = _cli("check", str(good))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK (3 device(s): sim)" in done.stdout


def test_run_refuses_bad_config_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: [\n")
    done = _cli("run", "-c", str(bad))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"{bad}:" in done.stderr and "not starting" in done.stderr


def test_schema_cli_is_json() -> None:
    done = _cli("schema")
    assert done.returncode == 0
    assert json.loads(done.stdout)["title"] == "parkgate configuration"


def _sample_files() -> list[Path]:
    files = sorted(ROOT.glob("drivers/*/sample.yaml")) + sorted(ROOT.glob("config/*.yaml"))
    return [f for f in files if f.name != "demo.yaml"]


@pytest.mark.parametrize("path", _sample_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_sample_config_checks(path: Path) -> None:
    done = _cli("check", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_demo_config_checks() -> None:
    env_done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "config/demo.yaml"], capture_output=True,
        text=True, cwd=ROOT, timeout=60,
        env={**__import__("os").environ, "PARKGATE_DEMO_DIR": "/tmp",
             "PARKGATE_DEMO_BROKER": "mqtt://127.0.0.1:1883"})
    assert env_done.returncode == 0, env_done.stdout + env_done.stderr


def test_problems_are_listed_up_to_a_hundred() -> None:
    """A machine-made file with thousands of mistakes: the first 100 in file order, then
    one line saying there is more (35,000 did-you-mean searches took 5 CPU seconds)."""
    text = GOOD.replace("${PG_TEST_PW}", "x").split("devices:")[0] + "devices:\n" + "".join(
        f"  - {{name: d{i}, driver: sim, pointz: 1}}\n" for i in range(3000))
    out = problems(text)
    assert len(out) == 101
    assert out[0] == "c.yaml:8:29: devices.0.pointz: unknown key 'pointz' (did you mean 'points'?)"
    assert out[99].startswith("c.yaml:107:")
    assert out[100] == ("c.yaml:1:1: (file): more problems not listed after the first 100: "
                        "fix these and check again")

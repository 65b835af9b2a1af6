"""Issue 10: hostile or careless config files, each reproduced the way the review found it.

`parkgate check` and `parkgate run` run as real processes under memory and CPU limits
(`resource.setrlimit` in the child), so a loader that blows up fails the test, not the
machine. The figures asserted are the issue's bounds: a clear exit 2 with FILE:LINE:COL,
under 100 MB of peak RSS and a few CPU seconds, on any input.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import model_validator

from drivers.sim import SimDriver, SimOptions
from gateway import logs
from gateway.config import ConfigProblems, load_config, parse_config
from gateway.driver import DriverInfo, discover_drivers

ROOT = Path(__file__).resolve().parents[2]
MAX_RSS_MIB = 100
MAX_CPU_S = 5.0
LIMIT_AS = 768 * 2**20  # the interpreter with pydantic and a driver maps about 60 MiB
LIMIT_CPU = 20

GOOD = """\
gateway: {id: gw1, site: park}
buffer: {path: /tmp/pg-hardening/b.db}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:1883"]
devices:
  - {name: s1, driver: sim, interval: 250ms}
"""


@dataclass
class Ran:
    code: int
    out: str
    err: str
    cpu_s: float
    maxrss_mib: float

    def lines(self) -> list[str]:
        return self.out.splitlines()


# The child sets its limits itself (preexec_fn is unsafe in a process with threads) and
# writes its own peak RSS on the way out: VmHWM starts afresh at exec, while the rusage
# of a forked child counts the test process's memory too.
_LIMITED = ("import os, resource, runpy, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_AS}, {LIMIT_AS}))\n"
            f"resource.setrlimit(resource.RLIMIT_CPU, ({LIMIT_CPU}, {LIMIT_CPU}))\n"
            "sys.argv[0] = 'parkgate'\n"
            "try:\n"
            "    runpy.run_module('gateway', run_name='__main__')\n"
            "finally:\n"
            "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "    open(os.environ['PG_HWM'], 'w').write(hwm.split()[1])\n")


def parkgate(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Ran:
    """`parkgate ARGS` in a child with bounded memory and CPU: its exit code, output, CPU
    seconds and peak RSS."""
    with tempfile.TemporaryDirectory(prefix="pg-run-") as tmp:
        out_path, err_path, hwm_path = (Path(tmp) / n for n in ("out", "err", "hwm"))
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen([sys.executable, "-c", _LIMITED, *args], cwd=ROOT,
                                    stdout=out, stderr=err, text=True,
                                    env={**os.environ, **(env or {}), "PG_HWM": str(hwm_path)})
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
            finally:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode == -signal.SIGKILL:
            raise TimeoutError(f"parkgate {' '.join(args)} still running after {timeout}s")
        hwm_kib = int(hwm_path.read_text()) if hwm_path.exists() else 0
        return Ran(proc.returncode, out_path.read_text(), err_path.read_text(),
                   usage.ru_utime + usage.ru_stime, hwm_kib / 1024)


def check(path: Path, **kw: Any) -> Ran:
    ran = parkgate("check", str(path), **kw)
    assert ran.cpu_s < MAX_CPU_S, ran
    assert 0 < ran.maxrss_mib < MAX_RSS_MIB, ran
    assert "Traceback" not in ran.err, ran.err
    return ran


def billion_laughs() -> str:
    """Nine levels of anchors, each a list of nine aliases of the level below."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


# --- 2: bounded costs ---------------------------------------------------------------------

def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    """534 bytes that expand to 9^9 values: refused where the aliases multiply too much."""
    text = billion_laughs()
    assert len(text) < 600
    cfg = tmp_path / "lol.yaml"
    cfg.write_text(text)
    ran = check(cfg)
    assert ran.code == 2, ran
    assert len(ran.lines()) == 1, ran
    line = ran.lines()[0]
    assert line.startswith(f"{cfg}:6:"), line  # level f: 9^6 values, past the bound
    assert "more than 250,000 values" in line and "alias" in line


def test_billion_laughs_inside_a_device_is_refused(tmp_path: Path) -> None:
    """The same bomb where the validation would walk it: under devices[0].points."""
    text = GOOD + "    " + billion_laughs().replace("\n", "\n    ").rstrip() + "\n"
    text = text.replace("  - {name: s1, driver: sim, interval: 250ms}\n",
                        "  - name: s1\n    driver: sim\n")
    cfg = tmp_path / "lol-device.yaml"
    cfg.write_text(text)
    ran = check(cfg)
    assert ran.code == 2, ran
    assert len(ran.lines()) == 1 and "more than 250,000 values" in ran.out, ran


def test_an_ingest_file_is_bounded_like_the_agents(tmp_path: Path) -> None:
    """`check` asks first whether a file is an ingest config: that look, and the ingest's
    own loading, once parsed the whole file unbounded (40 CPU s for 400,000 values) and
    read `${file:/dev/zero}` whole."""
    values = tmp_path / "values.yaml"
    values.write_text("source: [" + "1," * 400_000 + "1]\n")
    ran = check(values)
    assert ran.code == 2, ran
    assert len(ran.lines()) == 1 and "more than 250,000 values" in ran.out, ran
    lol = tmp_path / "lol.yaml"
    lol.write_text("sink: {table: t}\n" + billion_laughs())
    ran = check(lol)
    assert ran.code == 2 and len(ran.lines()) == 1 and "alias" in ran.out, ran
    zero = tmp_path / "zero.yaml"
    zero.write_text("source: {brokers: [mqtt://127.0.0.1], password: '${file:/dev/zero}'}\n"
                    "sink: {postgres: 'postgresql://x@127.0.0.1/test'}\n")
    ran = check(zero)
    assert ran.code == 2, ran
    assert f"{zero}:1:49: source.password: secret file /dev/zero is not a regular file" \
        in ran.lines(), ran


@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "big", "binary"])
def test_secret_files_are_bounded(tmp_path: Path, target: str) -> None:
    """`${file:/dev/zero}` read 1.3 GB; a FIFO hung `check`; a secret is a line of text."""
    path = Path(target)
    if target == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif target == "big":
        path = tmp_path / "big"
        path.write_bytes(b"x" * (2 * 2**20))
    elif target == "binary":
        path = tmp_path / "binary"
        path.write_bytes(b"pass\xffword\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                f'["mqtt://127.0.0.1:1883"]\n    password: ${{file:{path}}}'))
    ran = check(cfg, timeout=30)
    assert ran.code == 2, ran
    want = {"/dev/zero": f"secret file {path} is not a regular file",
            "fifo": f"secret file {path} is not a regular file",
            "big": f"secret file {path} is larger than 64 KiB (a secret is a line of text)",
            "binary": f"secret file {path} is not UTF-8 text (byte 0xff at offset 4)"}[target]
    assert ran.lines() == [f"{cfg}:6:15: uplink.mqtt.password: {want}"], ran


def test_one_secret_named_many_times_is_read_once_and_bounded(tmp_path: Path) -> None:
    """A 60 KiB secret named 3,000 times would substitute 180 MB: refused at 1 MiB."""
    secret = tmp_path / "s"
    secret.write_text("k" * 60_000)
    devices = "".join(f"  - {{name: d{i}, driver: sim, timeout: '${{file:{secret}}}'}}\n"
                      for i in range(3000))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.split("devices:", maxsplit=1)[0] + "devices:\n" + devices)
    ran = check(cfg)
    assert ran.code == 2, ran
    assert "substitutions add more than 1024 KiB in all" in ran.out, ran.out[:2000]


@pytest.mark.parametrize("shape", ["nesting", "size", "values"])
def test_shapes_that_cost_without_aliases_are_bounded(tmp_path: Path, shape: str) -> None:
    cfg = tmp_path / "c.yaml"
    if shape == "nesting":
        cfg.write_text("gateway: " + "[" * 200 + "]" * 200 + "\n")
        want = f"{cfg}:1:"
        what = "nested deeper than 32 levels"
    elif shape == "size":
        cfg.write_text("# " + "x" * (5 * 2**20) + "\n")
        want = f"{cfg}:1:1: (file):"
        what = "larger than 4 MiB"
    else:
        cfg.write_text("gateway: [" + "1," * 400_000 + "1]\n")
        want = f"{cfg}:1:"
        what = "more than 250,000 values"
    ran = check(cfg)
    assert ran.code == 2, ran
    assert len(ran.lines()) == 1 and ran.out.startswith(want) and what in ran.out, ran


def test_topic_format_spec_cannot_allocate(tmp_path: Path) -> None:
    """`{device:>999999999}` made `check` build a gigabyte string to test the template."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]', '["mqtt://127.0.0.1:1883"]\n'
                                '    topic: "p/{device:>999999999}"'))
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [f"{cfg}:6:12: uplink.mqtt.topic: topic template may use only "
                           "{site}, {gateway} and {device} ('{device:>999999999}')"], ran


# --- 5: topics ----------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "message"), [
    ("topic", '"p/{device}/\\0"',
     "a topic cannot contain a NUL character (U+0000): no broker accepts it"),
    ("status_topic", '"p/{gateway}/st\\0atus"',
     "a topic cannot contain a NUL character (U+0000): no broker accepts it"),
    ("topic", '"p/\\e[2J/{device}"', "a topic cannot contain the control character U+001B"),
    ("topic", '"' + "t" * 65_400 + '/{site}/{gateway}/{device}"',
     "topic is 65,595 bytes with {site}, {gateway} and {device} at their longest "
     "(64 characters); MQTT allows 65,535"),
    ("topic", '"$SYS/{device}"', "topics starting with $ belong to the broker ($SYS/...): "
                                 "choose another"),
])
def test_topics_no_broker_accepts_are_refused(tmp_path: Path, key: str, value: str,
                                              message: str) -> None:
    """Found: a NUL reconnected forever, a 65,536-byte topic made paho kill the agent."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                f'["mqtt://127.0.0.1:1883"]\n    {key}: {value}'))
    col = 7 + len(key)
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [f"{cfg}:6:{col}: uplink.mqtt.{key}: {message}"], ran
    started = parkgate("run", "-c", str(cfg))  # the agent refuses it too, before starting
    assert started.code == 2, started
    assert f"{cfg}:6:{col}: uplink.mqtt.{key}: {message}" in started.err


# --- 6 and 7: credentials ------------------------------------------------------------------

def test_credentials_in_a_broker_url_are_refused(tmp_path: Path) -> None:
    """`mqtt://user:token@host` was accepted, the user ignored, the token shown in
    /metrics, /readyz and the retained status."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('"mqtt://127.0.0.1:1883"',
                                '"mqtts://broker.example:8883", '
                                '"mqtt://gw01:tok3n-s3cret@127.0.0.1:1883"'))
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [
        f"{cfg}:5:14: uplink.mqtt.brokers: mqtt://***@127.0.0.1:1883: credentials in a "
        "broker URL are not used (and would show in /metrics, /readyz and the status "
        "message): put them in uplink.mqtt.username and password (password: "
        "${file:/etc/parkgate/mqtt-password} keeps it out of this file)"], ran
    assert "tok3n" not in ran.out + ran.err
    started = parkgate("run", "-c", str(cfg))  # nothing starts that could publish the URL
    assert started.code == 2, started
    assert "tok3n" not in started.out + started.err


def test_tls_settings_with_a_plain_broker_are_refused(tmp_path: Path) -> None:
    """`tls: {ca, cert, key}` with mqtt:// passed `check` and sent the password in clear."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                '["mqtt://broker.example:1883"]\n'
                                "    username: gw1\n    password: pw-1234\n"
                                "    tls: {ca: /etc/ca.pem, cert: /etc/c.pem, key: /etc/c.key}"))
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [
        f"{cfg}:8:15: uplink.mqtt.tls.ca: tls: is set but mqtt://broker.example:1883 is "
        "plain mqtt://, so it would not be used and the password and readings would go "
        "unencrypted: write mqtts://HOST:8883 (or remove tls:)"], ran


@pytest.mark.parametrize(("broker", "extra", "ok"), [
    ("mqtt://broker.example:1883", "", False),
    ("mqtt://10.0.0.5", "", False),
    ("mqtt://broker.example:1883", "\n    allow_plaintext_password: true", True),
    ("mqtt://127.0.0.1:1883", "", True),
    ("mqtt://localhost", "", True),
    ("mqtt://[::1]:1883", "", True),
    ("mqtts://broker.example:8883", "", True),
])
def test_a_password_over_plain_mqtt_needs_an_opt_in(broker: str, extra: str, ok: bool) -> None:
    text = GOOD.replace('["mqtt://127.0.0.1:1883"]',
                        f'["{broker}"]\n    password: pw-1234{extra}')
    if ok:
        parse_config(text, Path("c.yaml"))
        return
    with pytest.raises(ConfigProblems) as info:
        parse_config(text, Path("c.yaml"))
    assert [str(p) for p in info.value.problems] == [
        f"c.yaml:6:15: uplink.mqtt.password: the password would go unencrypted to {broker}: "
        "use mqtts://, or set allow_plaintext_password: true if the network path is trusted"]


# --- 8: redaction ---------------------------------------------------------------------------

def test_check_never_prints_a_secret_with_a_backslash(tmp_path: Path) -> None:
    """The broker URL message quotes the value with repr(): a backslash doubled there
    slipped past a redaction that looked for the raw value only."""
    secret = "not-a-url\\tok3n-s3cret"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('"mqtt://127.0.0.1:1883"', '"${PG_TEST_BROKER}"'))
    ran = check(cfg, env={"PG_TEST_BROKER": secret})
    assert ran.code == 2, ran
    assert ran.lines() == [f"{cfg}:5:14: uplink.mqtt.brokers: '***' is not a broker URL: write "
                           "mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"], ran
    assert "tok3n" not in ran.out + ran.err


def test_log_lines_never_carry_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """A secret inside an exception message reached the log in the formatted traceback;
    one with a backslash or a quote did so in its repr and JSON forms."""
    secrets = ["tok3n-s3cret", "back\\slash-s3cret", 'qu"ote-s3cret']
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    logs.configure("info", "json", secrets)  # writes to capsys's stdout from here on
    try:
        log = structlog.get_logger().bind(component="test")
        for secret in secrets:
            try:
                raise ConnectionError(f"login as {secret!r} failed: {secret}")
            except ConnectionError:
                log.exception("uplink failed", value=[secret], text=secret)
                logging.getLogger("paho").error("library: %r", secret, exc_info=True)
        out = capsys.readouterr().out
    finally:  # the next tests must not log into this test's captured (then closed) stdout
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 6
    # every line carries its traceback as text, the library's too (not `<traceback object>`),
    # and the masking reaches into all of them
    assert sum("Traceback" in line.get("exception", "") for line in lines) == 6
    for secret in secrets:
        for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], "s3cret"):
            assert form not in out, (form, out)


# --- 10: escape sequences -------------------------------------------------------------------

def test_escape_sequences_in_keys_do_not_reach_the_terminal(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace("gateway: {id: gw1, site: park}",
                                'gateway: {id: gw1, site: park, "\\e]0;pwned\\a\\e[2J": 1}'))
    ran = check(cfg)
    assert ran.code == 2, ran
    assert ran.lines() == [f"{cfg}:1:32: gateway.\\x1b]0;pwned\\x07\\x1b[2J: unknown key "
                           "'\\x1b]0;pwned\\x07\\x1b[2J'"], ran
    assert not any(ord(c) < 0x20 and c != "\n" for c in ran.out + ran.err)


# --- 1: any error while loading is a config problem ----------------------------------------

def test_a_non_utf8_secret_file_is_a_problem_with_its_position(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xc3\x28")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD.replace('["mqtt://127.0.0.1:1883"]',
                                f'["mqtt://127.0.0.1:1883"]\n    password: "${{file:{secret}}}"'))
    with pytest.raises(ConfigProblems) as info:
        load_config(cfg)
    assert str(info.value) == (f"{cfg}:6:15: uplink.mqtt.password: secret file {secret} is "
                               "not UTF-8 text (byte 0xc3 at offset 0)")


class _BoomOptions(SimOptions):
    @model_validator(mode="after")
    def _boom(self) -> _BoomOptions:
        raise MemoryError("cannot allocate")


class _BoomDriver(SimDriver):
    Options = _BoomOptions


def test_an_unexpected_error_while_loading_is_one_problem_line(tmp_path: Path) -> None:
    """A MemoryError (or any error nobody foresaw) in a driver's options while loading:
    one `(file)` problem, so a reload keeps the running config and a start exits 2."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    drivers = {**discover_drivers(), "sim": DriverInfo("sim", _BoomDriver)}
    with pytest.raises(ConfigProblems) as info:
        load_config(cfg, drivers)
    assert str(info.value) == f"{cfg}:1:1: (file): cannot load: MemoryError: cannot allocate"


# --- what the bounds must not take away ----------------------------------------------------

def test_aliases_and_merge_keys_a_field_engineer_writes_still_work() -> None:
    """One PLC written out, 99 more by `<<: *plc` or `registers: *regs`: 50,000 values
    through aliases, within the bound."""
    regs = "".join(f"      - {{name: r{i}, table: holding, address: {i}}}\n"
                   for i in range(100))
    head = GOOD.split("devices:", maxsplit=1)[0] + "devices:\n"
    first = ("  - &plc\n    name: plc0\n    driver: modbus\n    unit: 1\n    interval: 1s\n"
             "    transport: {type: tcp, host: 10.0.0.0, port: 502}\n"
             "    registers: &regs\n" + regs)
    merged = "".join(f"  - <<: *plc\n    name: plc{i}\n"
                     f"    transport: {{type: tcp, host: 10.0.0.{i}, port: 502}}\n"
                     for i in range(1, 50))
    aliased = "".join(f"  - {{name: plc{i}, driver: modbus, unit: 2, registers: *regs,\n"
                      f"     transport: {{type: tcp, host: 10.0.1.{i}, port: 502}}}}\n"
                      for i in range(50, 100))
    loaded = parse_config(head + first + merged + aliased, Path("c.yaml"))
    devices = loaded.config.devices
    assert [d.name for d in devices] == [f"plc{i}" for i in range(100)]
    points = [d.points() for d in devices]  # type: ignore[attr-defined]
    assert all(p == points[0] for p in points) and len(points[0]) == 100
    assert {d.unit for d in devices[:50]} == {1} and {d.unit for d in devices[50:]} == {2}  # type: ignore[attr-defined]


def test_yaml_1_2_scalars() -> None:
    """`yes`, `on` and `no` are strings; 0755 is 755; 0x10 is 16; 1_000 is 1000."""
    from gateway.yamlload import load_yaml

    doc, _ = load_yaml("a: yes\nb: on\nc: no\nd: 0755\ne: 0x10\nf: 1_000\ng: .inf\n"
                       "h: ~\ni: 'true'\nj: !!str 5\nk: 1.5e3\nl: True\n")
    assert doc == {"a": "yes", "b": "on", "c": "no", "d": 755, "e": 16, "f": 1000,
                   "g": float("inf"), "h": None, "i": "true", "j": "5", "k": 1500.0, "l": True}
